"""Housekeeping against running daemons: expiry, endpoint re-resolution and the live `peer list`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Lab, lab
from tests.ops.test_provision_netns import DAEMONS, client_conf, peer, up, write_server
from wgpy import config as wgconfig
from wgpy import keys
from wgpy.ops.provision import Target
from wgpy.ops.reresolve import reresolve_once
from wgpy.uapi import client as uapi

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


@pytest.mark.parametrize("daemon", DAEMONS)
def test_expire_removes_only_expired_peers_live(
    netlab: Lab, tmp_path: Path, daemon: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server, client = netlab.namespace(), netlab.namespace()
    netlab.veth(server, ["198.18.110.1/24"], client, ["198.18.110.2/24"])
    siface = netlab.interface()
    conf = tmp_path / f"{siface}.conf"
    write_server(conf, "10.110.0.1/24", None, 51910)
    common = ["--config", str(conf), "--endpoint", "198.18.110.1:51910", "--no-dns", "--no-qr"]
    peer("add", siface, "keep", *common, "--expires", "2099-12-31")
    peer("add", siface, "old", *common, "--expires", "2020-01-01")
    up(server, conf, daemon)
    up(client, client_conf(tmp_path, siface, "keep", netlab.interface()), daemon)
    client.wait_ping("10.110.0.1")
    keep_key, old_key = (p.public_key for p in wgconfig.load(str(conf)).peers)
    before = {p.public_key: p for p in uapi.get(siface).peers}[keep_key]

    capsys.readouterr()
    peer("list", siface, "--config", str(conf), "--json")
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["keep"]["running"] and rows["keep"]["latest_handshake"] > 0 and rows["keep"]["rx_bytes"] > 0
    assert rows["old"]["latest_handshake"] == 0 and rows["old"]["expires"] == "2020-01-01"

    peer("expire", siface, "--config", str(conf))
    live = {p.public_key: p for p in uapi.get(siface).peers}
    assert list(live) == [keep_key] and old_key not in live
    assert live[keep_key].last_handshake == before.last_handshake
    assert [p.friendly_name for p in wgconfig.load(str(conf)).peers] == ["keep"]
    assert client.ping("10.110.0.1").returncode == 0


def test_reresolve_sets_changed_host_name_endpoints(netlab: Lab, tmp_path: Path) -> None:
    server = netlab.namespace()
    siface = netlab.interface()
    conf = tmp_path / f"{siface}.conf"
    named, literal = (keys.public_key(keys.generate_private_key()) for _ in range(2))
    conf.write_text(
        "[Interface]\nAddress = 10.111.0.1/24\nListenPort = 51911\n"
        f"PrivateKey = {keys.to_base64(keys.generate_private_key())}\n\n"
        f"[Peer]\n# friendly_name = dyndns\nPublicKey = {keys.to_base64(named)}\nAllowedIPs = 10.111.0.2/32\n"
        "Endpoint = localhost:51999\n\n"
        f"[Peer]\nPublicKey = {keys.to_base64(literal)}\nAllowedIPs = 10.111.0.3/32\nEndpoint = 127.0.0.2:51998\n"
    )
    up(server, conf)
    # The name "moved" (as far as the interface knows): another address is in use now.
    uapi.apply(siface, uapi.DeviceChange(peers=[
        uapi.PeerChange(public_key=named, update_only=True, endpoint=("127.0.0.9", 51999)),
        uapi.PeerChange(public_key=literal, update_only=True, endpoint=("127.0.0.8", 51998)),
    ]))
    changes = reresolve_once(Target(conf, siface))
    assert [c.public_key for c in changes] == [named]
    live = {p.public_key: p.endpoint for p in uapi.get(siface).peers}
    assert live[named] in (("127.0.0.1", 51999), ("::1", 51999))
    assert live[literal] == ("127.0.0.8", 51998)  # IP literals are never re-resolved
    assert reresolve_once(Target(conf, siface)) == []
