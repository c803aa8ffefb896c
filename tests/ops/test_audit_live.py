"""The audit log written by a running wgpyd (actor uapi/daemon) and by the wgpy command (actor cli): one JSON line
per change and per security event, never a private or preshared key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO, Node, genpsk, interface_block, peer_block, wait_until
from tests.netns import Lab, lab
from wgpy.ops.audit import AuditLog, DeviceView, PeerView, record_changes

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        raw = base64.b64decode(secret)
        for form in (secret, raw.hex(), raw.hex().upper()):
            assert form not in text, "a secret reached the audit log"


def test_daemon_and_cli_audit_changes_and_sessions(netlab: Lab, tmp_path: Path) -> None:
    daemon_log, cli_log = tmp_path / "daemon.jsonl", tmp_path / "cli.jsonl"
    ns_a, ns_b = netlab.namespace(), netlab.namespace()
    netlab.veth(ns_a, ["198.18.0.1/24"], ns_b, ["198.18.0.2/24"])
    a = Node(ns_a, netlab.interface(), WGPYD, "198.18.0.1", "fd00:18::1", "10.0.0.1", "fd00:a::1")
    b = Node(ns_b, netlab.interface(), WIREGUARD_GO, "198.18.0.2", "fd00:18::2", "10.0.0.2", "fd00:a::2")
    a.start(extra_env={"WGPY_AUDIT_LOG": str(daemon_log)})
    b.start()
    psk = genpsk()
    b.setconf(interface_block(b) + peer_block(a, f"{a.inner4}/32", None, psk))
    a.setconf(interface_block(a) + peer_block(b, f"{b.inner4}/32", b.endpoint("4"), psk))
    a.ns.wait_ping(b.inner4, 20)

    # A change through the wgpy command, audited by the CLI (actor cli) and by the daemon (actor uapi).
    new_psk = genpsk()
    env = {**os.environ, "WGPY_AUDIT_LOG": str(cli_log)}
    subprocess.run([*a.ns.cmd([sys.executable, "-m", "wgpy", "set", a.iface, "peer", b.public,
                               "preshared-key", "/dev/stdin", "persistent-keepalive", "25"])],
                   input=new_psk, text=True, env=env, check=True, capture_output=True)
    a.wg("set", a.iface, "peer", b.public, "remove")

    wait_until(lambda: any(e["event"] == "peer_removed" for e in _lines(daemon_log)), 10, "peer_removed audited")
    daemon_events = _lines(daemon_log)
    kinds = [(e["event"], e["actor"]) for e in daemon_events]
    assert ("private_key_changed", "uapi") in kinds
    assert ("peer_added", "uapi") in kinds
    assert ("handshake_completed", "daemon") in kinds
    assert ("psk_changed", "uapi") in kinds
    assert ("peer_changed", "uapi") in kinds
    assert ("peer_removed", "uapi") in kinds
    added = next(e for e in daemon_events if e["event"] == "peer_added")
    assert added["public_key"] == b.public and added["allowed_ips"] == [f"{b.inner4}/32"]
    cli_kinds = [(e["event"], e["actor"]) for e in _lines(cli_log)]
    assert ("psk_changed", "cli") in cli_kinds and ("peer_changed", "cli") in cli_kinds
    assert oct(daemon_log.stat().st_mode & 0o777) == "0o600"
    _assert_no_secret(daemon_log.read_text() + cli_log.read_text(), [a.private, b.private, psk, new_psk])


def test_record_changes_diff(tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    before = DeviceView(None, None, 0, 0, {})
    after = DeviceView(None, None, 51820, 0, {key: PeerView("198.18.0.2:51820", ("10.0.0.2/32",), 0, b"d")})
    path = tmp_path / "audit.jsonl"
    with AuditLog(str(path)) as audit:
        record_changes(audit, "uapi", "wg0", before, after)
        record_changes(audit, "uapi", "wg0", after, after)  # nothing changed: nothing written
        record_changes(audit, "uapi", "wg0", after, before)
    assert [e["event"] for e in _lines(path)] == ["peer_added", "psk_changed", "peer_removed"]
