"""The exporter, scraped over HTTP on 127.0.0.1, agrees with `wg show IFACE dump` (wireguard-go daemon)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns import Lab, lab
from tests.ops.test_provision_netns import DAEMONS, client_conf, peer, up, write_server
from wgpy.ops.exporter import WireGuardCollector, serve


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def by_key(samples: list[tuple[dict[str, str], float]]) -> dict[str, tuple[dict[str, str], float]]:
    return {labels["public_key"]: (labels, value) for labels, value in samples}


@pytest.mark.netns
@pytest.mark.parametrize("daemon", DAEMONS)
def test_exporter_matches_wg_dump(netlab: Lab, tmp_path: Path, daemon: str) -> None:
    server, client = netlab.namespace(), netlab.namespace()
    netlab.veth(server, ["198.18.90.1/24"], client, ["198.18.90.2/24"])
    siface = netlab.interface()
    conf = tmp_path / f"{siface}.conf"
    write_server(conf, "10.90.0.1/24", "fd00:90::1/64", 51890)
    for name in ("laptop \"work\"", "idle"):
        peer("add", siface, name, "--config", str(conf), "--endpoint", "198.18.90.1:51890", "--no-dns",
             "--no-qr", "--keepalive", "0")
    up(server, conf, daemon)
    up(client, client_conf(tmp_path, siface, 'laptop "work"', netlab.interface()), daemon)
    client.wait_ping("10.90.0.1")
    assert client.ping("10.90.0.1", count=3).returncode == 0

    for endpoint_labels in (False, True):
        httpd, _registry = serve(0, "127.0.0.1", interfaces=[siface], configs={siface: conf},
                                 endpoint_labels=endpoint_labels)
        try:
            metrics = scrape(httpd.server_port)
            dump = server.run(["wg", "show", siface, "dump"]).stdout.splitlines()
        finally:
            httpd.shutdown()
            httpd.server_close()
        rows = [line.split("\t") for line in dump[1:]]
        assert metrics["wireguard_peers"] == [({"interface": siface}, 2.0)]
        sent = by_key(metrics["wireguard_sent_bytes_total"])
        received = by_key(metrics["wireguard_received_bytes_total"])
        handshake = by_key(metrics["wireguard_latest_handshake_seconds"])
        delay = by_key(metrics.get("wireguard_latest_handshake_delay_seconds", []))
        assert set(sent) == {row[0] for row in rows}
        for pub, _psk, endpoint, allowed, latest, rx, tx, _keepalive in rows:
            labels, value = sent[pub]
            assert value == float(tx)
            assert received[pub][1] == float(rx)
            assert handshake[pub][1] == float(latest)
            expected = {"interface": siface, "public_key": pub, "allowed_ips": allowed}
            if endpoint_labels and endpoint != "(none)":
                host, _, port = endpoint.rpartition(":")
                expected |= {"remote_ip": host.strip("[]"), "remote_port": port}
            name = 'laptop "work"' if latest != "0" else "idle"
            assert labels == expected | {"friendly_name": name}
            assert (pub in delay) == (latest != "0")
        assert any(v for _l, v in metrics["wireguard_received_bytes_total"])
        if daemon == "wireguard-go":
            # wireguard-go does not speak wgpy's stats extension: those metrics are simply absent.
            assert not any(name.startswith("wgpy_") for name in metrics)
        else:
            # wgpyd's stats extension: every drop reason, and its event counters.
            reasons = {labels["reason"] for labels, _v in metrics["wgpy_drops_total"]}
            assert {"replay", "source_not_allowed", "bad_mac1"} <= reasons
            ((labels, received_packets),) = metrics["wgpy_packets_received_total"]
            assert labels == {"interface": siface} and received_packets > 0


def test_exporter_reports_unreachable_interface(tmp_path: Path) -> None:
    collector = WireGuardCollector(["wgpy-nonexistent0"], config_dir=tmp_path)
    families = {f.name: f for f in collector.collect()}
    assert [(s.labels, s.value) for s in families["wireguard_up"].samples] == \
        [({"interface": "wgpy-nonexistent0"}, 0.0)]
    assert families["wireguard_sent_bytes"].samples == []
