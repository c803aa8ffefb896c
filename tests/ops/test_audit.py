"""The audit log writes one JSON line per event and never key material, by construction."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from pathlib import Path

import pytest

from wgpy.ops.audit import AuditError, AuditEvent, AuditLog


def _key() -> bytes:
    return secrets.token_bytes(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_event_line_format_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    pub = _b64(_key())
    log = AuditLog(str(path), clock=lambda: 1767225600.25)
    log.event("peer_added", actor="cli", public_key=pub, allowed_ips=["10.0.0.2/32"], name="phone")
    log.event(AuditEvent.HANDSHAKE_REJECTED, actor="daemon", reason="bad mac1", endpoint="198.18.0.1:51820")
    log.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == {"ts": "2026-01-01T00:00:00.250000Z", "event": "peer_added", "actor": "cli",
                     "public_key": pub, "allowed_ips": ["10.0.0.2/32"], "name": "phone"}
    assert json.loads(lines[1])["reason"] == "bad mac1"


def test_append_and_tighten_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"old":1}\n')
    os.chmod(path, 0o644)
    with AuditLog(str(path)) as log:
        log.event("psk_changed", actor="uapi", public_key=_b64(_key()))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith('{"old":1}\n')
    assert len(path.read_text().splitlines()) == 2


@pytest.mark.parametrize("bad", [
    {"private_key": "x"}, {"preshared_key": "x"}, {"psk": "x"}, {"new_private_key": "y"}, {"secret": "z"},
    {"key": "k"},
])
def test_key_named_fields_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    path = tmp_path / "a.log"
    log = AuditLog(str(path))
    with pytest.raises(AuditError):
        log.event("key_rotated", actor="cli", **bad)
    log.close()
    assert path.read_text() == ""


def test_key_material_in_innocent_fields_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AuditLog(str(path))
    priv, psk = _key(), _key()
    attempts: list[dict[str, object]] = [
        {"reason": _b64(priv)}, {"reason": priv.hex()}, {"note": f"psk was {_b64(psk)}!"},
        {"note": psk.hex().upper()}, {"raw": priv}, {"items": ["ok", _b64(psk)]}, {"obj": {"a": 1}},
        {"public_key": priv.hex()},  # a public key field must hold a base64 key, nothing else
        {"public_key": "not a key"},
    ]
    for fields in attempts:
        with pytest.raises(AuditError):
            log.event("peer_changed", actor="cli", **fields)
    log.close()
    text = path.read_text()
    assert text == ""
    for secret in (priv, psk):
        assert _b64(secret) not in text and secret.hex() not in text.lower()


def test_unknown_kind_or_actor_refused(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.log"))
    with pytest.raises(AuditError):
        log.event("peer_exploded", actor="cli")
    with pytest.raises(AuditError):
        log.event("peer_added", actor="root")
    with pytest.raises(AuditError):
        log.event("peer_added", actor="cli", ts="forged")
    with pytest.raises(AuditError, match="reason"):
        log.event("handshake_rejected", actor="daemon", endpoint="198.18.0.1:1")
    log.close()


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WGPY_AUDIT_LOG", raising=False)
    assert AuditLog.from_env() is None
    monkeypatch.setenv("WGPY_AUDIT_LOG", str(tmp_path / "env.log"))
    log = AuditLog.from_env()
    assert log is not None
    log.event("endpoint_changed", actor="daemon", public_key=_b64(_key()), endpoint="[fd00::1]:51820")
    log.close()
    assert json.loads((tmp_path / "env.log").read_text())["endpoint"] == "[fd00::1]:51820"


def test_journal_without_python_systemd_is_a_clear_error() -> None:
    try:
        import systemd  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(AuditError, match="python-systemd"):
            AuditLog(journal=True)
    else:
        AuditLog(journal=True).event("peer_removed", actor="cli", public_key=_b64(_key()))


def test_audit_command_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wgpy.ops.cli import COMMANDS

    path = tmp_path / "a.log"
    a, b = _b64(_key()), _b64(_key())
    with AuditLog(str(path), clock=iter([1.0e9, 1.1e9, 1.2e9]).__next__) as log:
        log.event("peer_added", actor="cli", public_key=a, name="a")
        log.event("psk_changed", actor="cli", public_key=a)
        log.event("peer_removed", actor="cli", public_key=b)
    assert COMMANDS["audit"]([str(path), "--peer", a, "--event", "psk_changed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "psk_changed" in lines[0] and a in lines[0]
    assert COMMANDS["audit"]([str(path), "--since", "2005-01-01", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["event"] == "peer_removed"
