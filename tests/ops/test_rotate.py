"""Rotation edits both ends' files in place and logs no key material (file-level; live tests in *_netns)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.ops import provision, rotate
from wgpy.ops.audit import AuditLog
from wgpy.ops.cli import COMMANDS
from wgpy.ops.provision import AddRequest, Target


@pytest.fixture
def server(tmp_path: Path) -> Target:
    path = tmp_path / "wgr.conf"
    path.write_text(
        "[Interface]\n# my own comment\nAddress = 10.8.0.1/24\n"
        f"PrivateKey = {keys.to_base64(keys.generate_private_key())}\n"
    )
    target = Target(path, "wgr-not-running")
    for name in ("a", "b"):
        provision.add_peer(target, AddRequest(name, endpoint="198.18.8.1:51820"))
    return target


def _secrets(target: Target) -> list[bytes]:
    """Every private and preshared key in the server and client files."""
    out: list[bytes] = []
    for path in [target.path, *sorted(target.clients_dir.glob("*.conf"))]:
        cfg = wgconfig.load(str(path))
        out += [k for k in [cfg.interface.private_key] + [p.preshared_key for p in cfg.peers] if k]
    return out


def _assert_no_secrets(log: Path, secrets: list[bytes]) -> None:
    text = log.read_text()
    for secret in secrets:
        assert keys.to_base64(secret) not in text
        assert secret.hex() not in text.lower()


def test_psk_rotation_updates_both_ends(server: Target, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    old_secrets = _secrets(server)
    before = server.path.read_text()
    old_cfg = wgconfig.load(str(server.path))
    rotate.rotate_psk(server, ["a"], audit=AuditLog(str(log)))
    cfg = wgconfig.load(str(server.path))
    a_old, b_old = old_cfg.peers
    a_new, b_new = cfg.peers
    assert a_new.preshared_key != a_old.preshared_key and b_new.preshared_key == b_old.preshared_key
    client = wgconfig.load(str(server.client_path("a")))
    assert client.peers[0].preshared_key == a_new.preshared_key
    # Only the one PresharedKey line changed.
    assert a_old.preshared_key is not None and a_new.preshared_key is not None
    assert server.path.read_text() == before.replace(keys.to_base64(a_old.preshared_key),
                                                     keys.to_base64(a_new.preshared_key))
    (event,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert event["event"] == "psk_changed" and event["public_key"] == keys.to_base64(a_new.public_key)
    _assert_no_secrets(log, old_secrets + _secrets(server))


def test_external_psk_from_file(server: Target, tmp_path: Path) -> None:
    psk = keys.generate_preshared_key()
    f = tmp_path / "psk"
    f.write_text(keys.to_base64(psk) + "\n")
    log = tmp_path / "audit.log"
    assert COMMANDS["rotate"](["psk", server.interface, "--config", str(server.path), "--peer", "b",
                               "--from-file", str(f), "--audit-log", str(log)]) == 0
    assert wgconfig.load(str(server.path)).peers[1].preshared_key == psk
    assert wgconfig.load(str(server.client_path("b"))).peers[0].preshared_key == psk
    assert json.loads(log.read_text())["source"] == "external"
    _assert_no_secrets(log, [psk])
    # An external PSK for every peer at once is refused: it belongs to one peer.
    assert COMMANDS["rotate"](["psk", server.interface, "--config", str(server.path),
                               "--from-file", str(f)]) == 1


def test_client_key_rotation_and_finish(server: Target, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    old_secrets = _secrets(server)
    old_a = wgconfig.load(str(server.path)).peers[0]
    r = rotate.rotate_client_key(server, "a", grace=dt.timedelta(hours=1), audit=AuditLog(str(log)))
    cfg = wgconfig.load(str(server.path))
    assert [p.friendly_name for p in cfg.peers] == ["a", "b", "a"]
    new = cfg.peers[2]
    assert new.public_key == r.new_public_key and new.allowed_ips == []
    assert cfg.peers[0].allowed_ips == old_a.allowed_ips
    client = wgconfig.load(str(server.client_path("a")))
    assert client.interface.private_key is not None
    assert keys.public_key(client.interface.private_key) == r.new_public_key
    assert client.peers[0].preshared_key == new.preshared_key
    # Not due yet: no handshake (not running), grace not over.
    assert rotate.finish_rotations(server) == []
    later = (r.grace_until + dt.timedelta(seconds=1)).timestamp()
    (done,) = rotate.finish_rotations(server, clock=lambda: later, audit=AuditLog(str(log)))
    assert done.reason == "grace expired"
    cfg = wgconfig.load(str(server.path))
    assert [p.public_key for p in cfg.peers] == [cfg.peers[0].public_key, r.new_public_key]
    assert cfg.peers[1].allowed_ips == old_a.allowed_ips and not cfg.peers[1].metadata
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["key_rotated", "key_rotated"]
    _assert_no_secrets(log, old_secrets + _secrets(server))


def test_server_key_rotation_reissues_clients(server: Target, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    old_secrets = _secrets(server)
    assert COMMANDS["rotate"](["server-key", server.interface, "--config", str(server.path)]) == 1  # no --yes
    r = rotate.rotate_server_key(server, audit=AuditLog(str(log)))
    cfg = wgconfig.load(str(server.path))
    assert cfg.interface.private_key is not None
    assert keys.public_key(cfg.interface.private_key) == r.new_public_key
    for name in ("a", "b"):
        assert wgconfig.load(str(server.client_path(name))).peers[0].public_key == r.new_public_key
    assert len(r.reissued) == 2 and r.not_reissued == []
    _assert_no_secrets(log, old_secrets + _secrets(server))


def test_parse_duration() -> None:
    assert rotate.parse_duration("1d") == 86400 and rotate.parse_duration("30s") == 30
    with pytest.raises(provision.ProvisionError):
        rotate.parse_duration("soon")


def test_rotate_every_loops(server: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wgpy.ops.cli as ops_cli

    seen: list[bytes | None] = []
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        seen.append(wgconfig.load(str(server.path)).peers[0].preshared_key)
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ops_cli.time, "sleep", fake_sleep)
    assert COMMANDS["rotate"](["psk", server.interface, "--config", str(server.path), "--every", "12h"]) == 0
    assert sleeps == [43200.0] * 3
    assert len(set(seen)) == 3  # a new PSK every round


def test_unnamed_psk_rotation_skips_peers_configured_elsewhere(server: Target) -> None:
    text = provision.ConfigText.load(server.path)
    foreign = keys.public_key(keys.generate_private_key())
    foreign_psk = keys.generate_preshared_key()
    text.append_block(["[Peer]", "# friendly_name = elsewhere", f"PublicKey = {keys.to_base64(foreign)}",
                       f"PresharedKey = {keys.to_base64(foreign_psk)}", "AllowedIPs = 10.8.0.99/32"])
    text.save()
    done = rotate.rotate_psk(server)
    assert sorted(r.peer.friendly_name or "" for r in done) == ["a", "b"]
    assert wgconfig.load(str(server.path)).peers[2].preshared_key == foreign_psk
    (named,) = rotate.rotate_psk(server, ["elsewhere"])
    assert named.client_path is None
    assert wgconfig.load(str(server.path)).peers[2].preshared_key != foreign_psk


def test_external_psk_from_stdin(server: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    psk = keys.generate_preshared_key()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"  {keys.to_base64(psk)}\n"))
    assert COMMANDS["rotate"](["psk", server.interface, "--config", str(server.path), "--peer", "a",
                               "--stdin"]) == 0
    assert wgconfig.load(str(server.path)).peers[0].preshared_key == psk
    monkeypatch.setattr("sys.stdin", io.StringIO("not a key\n"))
    assert COMMANDS["rotate"](["psk", server.interface, "--config", str(server.path), "--peer", "a",
                               "--stdin"]) == 1
    assert wgconfig.load(str(server.path)).peers[0].preshared_key == psk


def test_client_brings_its_new_key(server: Target) -> None:
    own = keys.generate_private_key()
    old = wgconfig.load(str(server.path)).peers[1]
    before_client = server.client_path("b").read_text()
    assert COMMANDS["rotate"](["client-key", server.interface, "b", "--config", str(server.path),
                               "--public-key", keys.to_base64(keys.public_key(own))]) == 0
    new = wgconfig.load(str(server.path)).peers[2]
    assert new.public_key == keys.public_key(own) and new.preshared_key == old.preshared_key
    assert server.client_path("b").read_text() == before_client  # nothing to re-issue: the key is the client's
    (done,) = rotate.finish_rotations(server, force=True)
    assert done.reason == "forced"
    assert [p.public_key for p in wgconfig.load(str(server.path)).peers][1:] == [keys.public_key(own)]
