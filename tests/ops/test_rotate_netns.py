"""Rotation against running wireguard-go interfaces: no echo lost for PSKs, a real hand-over for client keys."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Lab, Namespace, lab
from tests.ops.test_provision_netns import DAEMONS, client_conf, peer, up, write_server
from wgpy import config as wgconfig
from wgpy import keys
from wgpy.ops.cli import COMMANDS
from wgpy.uapi import client as uapi

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


@pytest.fixture(params=DAEMONS)
def daemon(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def rotate(*args: str) -> None:
    assert COMMANDS["rotate"](list(args)) == 0, args


def setup_pair(netlab: Lab, tmp_path: Path, subnet: int, daemon: str) -> tuple[Namespace, Namespace, str, str, Path]:
    server, client = netlab.namespace(), netlab.namespace()
    netlab.veth(server, [f"198.18.{subnet}.1/24"], client, [f"198.18.{subnet}.2/24"])
    siface, ciface = netlab.interface(), netlab.interface()
    conf = tmp_path / f"{siface}.conf"
    write_server(conf, f"10.{subnet}.0.1/24", None, 51800 + subnet)
    peer("add", siface, "phone", "--config", str(conf), "--endpoint", f"198.18.{subnet}.1:{51800 + subnet}",
         "--no-dns", "--no-qr", "--layout", "hub-and-spoke")
    peer("add", siface, "other", "--config", str(conf), "--endpoint", f"198.18.{subnet}.1:{51800 + subnet}",
         "--no-dns", "--no-qr")
    up(server, conf, daemon)
    up(client, client_conf(tmp_path, siface, "phone", ciface), daemon)
    client.wait_ping(f"10.{subnet}.0.1")
    return server, client, siface, ciface, conf


def live_psk(iface: str, public_key: bytes) -> bytes | None:
    return {p.public_key: p.preshared_key for p in uapi.get(iface).peers}[public_key]


def test_psk_rotation_under_ping_loses_nothing(netlab: Lab, tmp_path: Path, daemon: str) -> None:
    _server, client, siface, ciface, conf = setup_pair(netlab, tmp_path, 101, daemon)
    phone_key = wgconfig.load(str(conf)).peers[0].public_key
    server_key = uapi.get(siface).public_key
    assert server_key is not None
    old_psk = live_psk(siface, phone_key)
    pinger = subprocess.Popen(client.cmd(["ping", "-c", "100", "-i", "0.05", "-W", "2", "10.101.0.1"]),
                              stdout=subprocess.PIPE, text=True)
    netlab.processes.append(pinger)  # type: ignore[arg-type]
    time.sleep(1.0)
    rotate("psk", siface, "--config", str(conf), "--apply-client", f"phone={ciface}")
    out, _ = pinger.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    assert m.group(1) == m.group(2) == "100", out
    new_psk = live_psk(siface, phone_key)
    assert new_psk is not None and new_psk != old_psk
    assert live_psk(ciface, server_key) == new_psk
    assert wgconfig.load(str(conf)).peers[0].preshared_key == new_psk
    # A fresh handshake with the new PSK succeeds: restart the client's interface.
    client_file = tmp_path / "clients" / f"{ciface}.conf"
    client_file.write_text((tmp_path / f"{siface}.clients" / "phone.conf").read_text())
    client.run(["wg-quick", "down", str(client_file)])
    before = {p.public_key: p for p in uapi.get(siface).peers}[phone_key].last_handshake
    up(client, client_file, daemon)
    client.wait_ping("10.101.0.1")
    after = {p.public_key: p for p in uapi.get(siface).peers}[phone_key].last_handshake
    assert after > before


def secrets_in(directory: Path) -> set[bytes]:
    """Every private and preshared key in the configuration files under `directory`."""
    out: set[bytes] = set()
    for path in directory.rglob("*.conf"):
        cfg = wgconfig.load(str(path))
        out |= {k for k in [cfg.interface.private_key, *(p.preshared_key for p in cfg.peers)] if k}
    return out


def test_client_key_then_server_key_rotation(
    netlab: Lab, tmp_path: Path, daemon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit_log = tmp_path / "audit" / "wgpy.log"
    audit_log.parent.mkdir()
    monkeypatch.setenv("WGPY_AUDIT_LOG", str(audit_log))
    _server, client, siface, ciface, conf = setup_pair(netlab, tmp_path, 102, daemon)
    secrets = secrets_in(tmp_path)
    old_key = wgconfig.load(str(conf)).peers[0].public_key
    rotate("client-key", siface, "phone", "--config", str(conf), "--apply-client", ciface, "--no-qr")
    secrets |= secrets_in(tmp_path)
    live = {p.public_key: p for p in uapi.get(siface).peers}
    (new_key,) = [k for k in live if k not in (old_key, wgconfig.load(str(conf)).peers[1].public_key)]
    # The old key keeps the address during the grace period; the new one has none yet.
    assert [str(n) for n in live[old_key].allowed_ips] == ["10.102.0.2/32"]
    assert live[new_key].allowed_ips == []
    # The client (now on the new key) handshakes; its data waits for `rotate finish`.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        client.run(["ping", "-c", "1", "-W", "1", "10.102.0.1"], check=False)
        if {p.public_key: p for p in uapi.get(siface).peers}[new_key].last_handshake[0]:
            break
    else:
        raise AssertionError("the new client key never completed a handshake")
    rotate("finish", siface, "--config", str(conf))
    secrets |= secrets_in(tmp_path)
    live = {p.public_key: p for p in uapi.get(siface).peers}
    assert old_key not in live and [str(n) for n in live[new_key].allowed_ips] == ["10.102.0.2/32"]
    client.wait_ping("10.102.0.1")
    cfg = wgconfig.load(str(conf))
    assert [p.friendly_name for p in cfg.peers] == ["other", "phone"]

    # Server key: the client interface on this host follows; sessions re-establish with the new key.
    rotate("server-key", siface, "--config", str(conf), "--yes", "--apply-client", f"phone={ciface}")
    new_server = uapi.get(siface).public_key
    assert new_server is not None
    assert [p.public_key for p in uapi.get(ciface).peers] == [new_server]
    issued = wgconfig.load(str(tmp_path / f"{siface}.clients" / "phone.conf"))
    assert issued.peers[0].public_key == new_server
    assert issued.interface.private_key is not None
    assert keys.public_key(issued.interface.private_key) == new_key
    client.wait_ping("10.102.0.1", seconds=20)
    rotate("psk", siface, "--config", str(conf))
    secrets |= secrets_in(tmp_path)

    # The audit log tells the whole story and holds none of the keys it saw go by.
    text = audit_log.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    # wgpyd inherits WGPY_AUDIT_LOG from the test and audits the same changes as they reach its UAPI (actor uapi)
    # and its sessions (actor daemon); the CLI's own story is the lines with actor cli.
    events = [r["event"] for r in records if r["actor"] == "cli"]
    assert events == ["peer_added", "peer_added", "key_rotated", "key_rotated", "private_key_changed",
                      "psk_changed", "psk_changed"]
    if daemon == "wgpyd":
        assert {"uapi", "daemon"} <= {r["actor"] for r in records}
    assert len(secrets) >= 8
    for secret in secrets:
        assert keys.to_base64(secret) not in text and secret.hex() not in text.lower()
