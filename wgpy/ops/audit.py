"""The audit log: one JSON line per configuration or session event, safe to ship anywhere.

Operators forward audit logs to places with weaker protection than the key files (log collectors, tickets), so
the log must never carry a private or preshared key. That is enforced by construction rather than by review:

* the only key-valued fields accepted are public keys (``public_key``, ``old_public_key``,
  ``new_public_key``), and each must be a valid 32-byte base64 key;
* any other field whose name mentions a key, secret or password is refused;
* values are JSON scalars or lists of them (``bytes``, the in-memory form of every key, is refused);
* any other string value that has the shape of a key (44-character base64 or 64-character hex of 32 bytes) is
  refused, so a key cannot slip in under an innocent name like ``reason``.

A refused event raises :class:`AuditError` and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any

from wgpy.uapi import client

if TYPE_CHECKING:
    from wgpy.protocol.device import Device
    from wgpy.uapi.client import DeviceState

ENV_VAR = "WGPY_AUDIT_LOG"
JOURNAL = "journal"  # WGPY_AUDIT_LOG=journal sends events to the systemd journal


class AuditEvent(StrEnum):
    PEER_ADDED = "peer_added"
    PEER_REMOVED = "peer_removed"
    PEER_CHANGED = "peer_changed"
    HANDSHAKE_COMPLETED = "handshake_completed"
    HANDSHAKE_REJECTED = "handshake_rejected"
    ENDPOINT_CHANGED = "endpoint_changed"
    KEY_ROTATED = "key_rotated"
    PRIVATE_KEY_CHANGED = "private_key_changed"
    PSK_CHANGED = "psk_changed"


ACTORS = frozenset({"uapi", "cli", "daemon"})
PUBLIC_KEY_FIELDS = frozenset({"public_key", "old_public_key", "new_public_key"})
RESERVED_FIELDS = frozenset({"ts", "event", "actor"})
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SECRET_WORDS = ("key", "psk", "secret", "password", "passphrase", "private", "preshared")
_BASE64_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


class AuditError(Exception):
    """An event that cannot be written (unknown kind, bad actor, or something that could be key material)."""


def _is_public_key(value: object) -> bool:
    if not isinstance(value, str) or not _BASE64_KEY.fullmatch(value):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _looks_like_key(text: str) -> bool:
    """True if `text` contains something shaped like a 32-byte key in base64 or hex."""
    return bool(_BASE64_KEY.search(text) or _HEX_KEY.search(text))


def _check_value(name: str, value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if _looks_like_key(value):
            raise AuditError(f"audit field {name!r} holds something shaped like a key; refused")
        return value
    if isinstance(value, list | tuple):
        return [_check_value(name, item) for item in value]
    # bytes (every key in memory), dicts and arbitrary objects (whose str() could be anything) are refused.
    raise AuditError(f"audit field {name!r} has type {type(value).__name__}; only str, numbers, bools, lists")


def validate_fields(fields: dict[str, object]) -> dict[str, object]:
    """The checked copy of `fields`, or AuditError; callers may test an event before emitting it."""
    out: dict[str, object] = {}
    for name, value in fields.items():
        if not _FIELD_NAME.match(name) or name in RESERVED_FIELDS:
            raise AuditError(f"invalid audit field name {name!r}")
        if name in PUBLIC_KEY_FIELDS:
            if value is not None and not _is_public_key(value):
                raise AuditError(f"audit field {name!r} must be a base64 public key")
            out[name] = value
            continue
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            raise AuditError(f"audit field {name!r} could hold key material; only public keys may be logged")
        out[name] = _check_value(name, value)
    return out


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 with microseconds and a Z suffix, the form log shippers parse without configuration."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """Append-only JSON-lines audit log (file, journal, or both).

    Thread-safe: the daemon emits from its loop while the UAPI handler may emit from another thread.
    """

    def __init__(
        self, path: str | None = None, *, journal: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        if path is None and not journal:
            raise AuditError("an audit log needs a path, journal=True, or both")
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._journal_send: Callable[..., Any] | None = None
        if journal:
            try:
                from systemd import journal as systemd_journal  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                raise AuditError(
                    "audit to the journal needs python-systemd (Debian: python3-systemd); "
                    "install it or log to a file with WGPY_AUDIT_LOG=/path"
                ) from None
            self._journal_send = systemd_journal.send
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an existing file created by someone else's umask is tightened too
                self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
            except BaseException:
                os.close(fd)
                raise

    @classmethod
    def from_env(cls) -> AuditLog | None:
        """The log named by WGPY_AUDIT_LOG (a path, or ``journal``), or None when unset or empty."""
        target = os.environ.get(ENV_VAR, "").strip()
        if not target:
            return None
        if target == JOURNAL:
            return cls(journal=True)
        return cls(target)

    def record(self, kind: str, *, actor: str, **fields: object) -> dict[str, object]:
        """The validated record `event` would write (no I/O)."""
        try:
            kind = AuditEvent(kind).value
        except ValueError:
            raise AuditError(f"unknown audit event kind {kind!r}") from None
        if actor not in ACTORS:
            raise AuditError(f"unknown audit actor {actor!r} (one of {', '.join(sorted(ACTORS))})")
        if kind == AuditEvent.HANDSHAKE_REJECTED and not fields.get("reason"):
            raise AuditError("a handshake_rejected event needs a reason")
        checked = validate_fields(fields)
        return {"ts": rfc3339(self._clock()), "event": kind, "actor": actor, **checked}

    def event(self, kind: str, *, actor: str, **fields: object) -> None:
        record = self.record(kind, actor=actor, **fields)
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
            if self._journal_send is not None:
                extra = {f"WGPY_{k.upper()}": json.dumps(v) if not isinstance(v, str) else v
                         for k, v in record.items() if k not in ("ts",)}
                self._journal_send(f"wgpy {record['event']}", SYSLOG_IDENTIFIER="wgpy", **extra)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- configuration changes as audit events ---------------------------------------------------------------------
#
# wgpyd (for UAPI requests) and the wgpy command (for set/setconf/addconf/syncconf) both describe a device before
# and after a change as a DeviceView, and audit the difference. Secrets enter a view only as a keyed digest, to be
# compared, never written.

_DIGEST_PERSON = b"wgpyaudt"


def secret_digest(secret: bytes | None) -> bytes | None:
    """A digest that tells whether a private or preshared key changed, without holding the key."""
    if not secret or not any(secret):
        return None
    return hashlib.blake2s(secret, person=_DIGEST_PERSON).digest()


@dataclass(frozen=True)
class PeerView:
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    persistent_keepalive: int
    psk_digest: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeviceView:
    public_key: str | None
    private_digest: bytes | None = field(repr=False)
    listen_port: int
    fwmark: int
    peers: dict[str, PeerView]  # base64 public key -> view


def _endpoint_text(endpoint: tuple[str, int] | None) -> str | None:
    return None if endpoint is None else client.format_endpoint(endpoint)


def view_of_state(state: DeviceState) -> DeviceView:
    """The view of a device as read over the UAPI (any daemon)."""
    return DeviceView(
        public_key=base64.b64encode(state.public_key).decode() if state.public_key else None,
        private_digest=secret_digest(state.private_key),
        listen_port=state.listen_port,
        fwmark=state.fwmark,
        peers={
            base64.b64encode(p.public_key).decode(): PeerView(
                _endpoint_text(p.endpoint), tuple(str(n) for n in p.allowed_ips), p.persistent_keepalive,
                secret_digest(p.preshared_key),
            )
            for p in state.peers
        },
    )


def view_of_device(device: Device) -> DeviceView:
    """The view of wgpyd's own core."""
    public = device.public_key
    return DeviceView(
        public_key=base64.b64encode(public).decode() if public else None,
        private_digest=secret_digest(device.private_key),
        listen_port=device.listen_port,
        fwmark=device.fwmark,
        peers={
            base64.b64encode(p.public_key).decode(): PeerView(
                _endpoint_text(p.endpoint), tuple(str(n) for n in device.allowed_ips.entries_for(p)),
                p.persistent_keepalive, secret_digest(p.preshared_key),
            )
            for p in device.peers()
        },
    )


def record_changes(audit: AuditLog, actor: str, interface: str, before: DeviceView, after: DeviceView) -> None:
    """One audit line per peer added, removed or changed, per PSK change, and for a new private key."""
    if before.private_digest != after.private_digest:
        audit.event(AuditEvent.PRIVATE_KEY_CHANGED, actor=actor, interface=interface,
                    old_public_key=before.public_key, new_public_key=after.public_key)
    for key, peer in after.peers.items():
        old = before.peers.get(key)
        if old is None:
            audit.event(AuditEvent.PEER_ADDED, actor=actor, interface=interface, public_key=key,
                        endpoint=peer.endpoint, allowed_ips=list(peer.allowed_ips),
                        persistent_keepalive=peer.persistent_keepalive)
            if peer.psk_digest is not None:
                audit.event(AuditEvent.PSK_CHANGED, actor=actor, interface=interface, public_key=key, cleared=False)
            continue
        changed = [name for name in ("endpoint", "allowed_ips", "persistent_keepalive")
                   if getattr(old, name) != getattr(peer, name)]
        if changed:
            audit.event(AuditEvent.PEER_CHANGED, actor=actor, interface=interface, public_key=key, changed=changed,
                        endpoint=peer.endpoint, allowed_ips=list(peer.allowed_ips),
                        persistent_keepalive=peer.persistent_keepalive)
        if old.psk_digest != peer.psk_digest:
            audit.event(AuditEvent.PSK_CHANGED, actor=actor, interface=interface, public_key=key,
                        cleared=peer.psk_digest is None)
    for key in before.peers.keys() - after.peers.keys():
        audit.event(AuditEvent.PEER_REMOVED, actor=actor, interface=interface, public_key=key)
