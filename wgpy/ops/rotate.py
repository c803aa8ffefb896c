"""Key rotation: preshared keys, client static keys (with a grace period) and the server's static key.

Preshared keys (``wgpy rotate psk``)
    A new PSK for each selected peer goes, in memory, into the server configuration and into every client
    configuration this host issued; then the running interface gets all of them in *one* UAPI ``set`` (with
    ``update_only``, so a peer removed meanwhile is not recreated); only then are the files replaced. No
    packet is lost: a PSK is used only by the next handshake, current sessions keep their keys, and a handshake
    that fails because the other end is not updated yet is retried while the old session still carries data
    (it stays valid for REJECT_AFTER_TIME). ``--apply-client NAME=IFACE`` also updates a client interface this
    host runs. Without ``--peer``, only peers with a client configuration issued here are rotated: a peer
    configured elsewhere would lose the tunnel at its next handshake. The other end still has to *receive* its
    re-issued file: a scheduled rotation (``--every``, the contrib timer) suits clients whose configuration is
    delivered automatically (configuration management, clients on this host); a phone that scanned a QR code
    must scan the new one. ``--from-file``/``--stdin`` take an externally negotiated PSK (Rosenpass-style,
    base64) for one peer and apply it the same way, atomically.

Client static keys (``wgpy rotate client-key`` then ``wgpy rotate finish``)
    WireGuard gives each AllowedIPs prefix to exactly one peer, so the old and the new key cannot both own the
    client's addresses during a grace period. We do not pretend otherwise:

    1. ``rotate client-key`` adds the new key as a *second* ``[Peer]`` **without AllowedIPs** (metadata
       ``# rotating_from`` and ``# grace_until``) and re-issues the client configuration with the new key. The
       old peer keeps the addresses: clients not yet updated keep working.
    2. A client that switches to the new key can complete a handshake at once (handshakes do not need
       AllowedIPs), but its data packets are dropped by the server until step 3 moves the addresses.
    3. ``rotate finish`` (run it from a timer every minute, or with ``--watch``) moves the addresses to the new
       peer and removes the old one, in one UAPI ``set``, as soon as the new key has completed a handshake, or
       when the grace period ends (then the old key stops working; that is what a rotation is for).

    So the grace period is real for clients that have not switched yet; a client that switched is cut off
    for at most one interval of ``rotate finish``.

Server static key (``wgpy rotate server-key``)
    Every client must learn the new public key, so this cannot be seamless. Procedure: run it in a maintenance
    window; it writes the new private key, re-issues every client configuration this host issued (new
    ``[Peer] PublicKey``), applies the key to the running interface (all sessions end), and prints which
    clients need their new configuration (``wgpy peer show IFACE NAME --qr``). Clients brought their own key
    or configured elsewhere must be told the new public key by hand.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.config import Config, PeerConfig
from wgpy.ops.audit import AuditLog
from wgpy.ops.provision import (
    PLACEHOLDER_PRIVATE_KEY,
    ConfigText,
    ProvisionError,
    Target,
    find_peer,
    interface_running,
    locked,
    peer_label,
    server_public_key,
    sync_live,
)
from wgpy.uapi import client as uapi

DEFAULT_GRACE = dt.timedelta(days=7)
_DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``12h``, ``1d``, ``2w`` -> seconds."""
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ProvisionError(f"not a duration (like 30s, 15m, 12h, 1d, 2w): {text!r}")
    return float(int(m.group(1)) * _UNITS[m.group(2)])


def _utcnow(clock: Callable[[], float]) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock(), dt.UTC).replace(microsecond=0)


# --------------------------------------------------------------------------------------------------------
# Issued client configurations


@dataclass
class ClientFile:
    """An issued client configuration, edited line by line like the server's."""

    name: str
    path: Path
    text: ConfigText

    def server_peer_range(self, server_key: bytes) -> tuple[int, int]:
        return self.text.peer_range(server_key)


def issued_client(target: Target, peer: PeerConfig, server_key: bytes) -> ClientFile | None:
    """The client configuration this host issued for `peer`, if any (and if it still points at this server)."""
    if not peer.friendly_name:
        return None
    path = target.client_path(peer.friendly_name)
    if not path.exists():
        return None
    text = ConfigText.load(path)
    try:
        cfg = wgconfig.parse(text.text.replace(PLACEHOLDER_PRIVATE_KEY, keys.to_base64(bytes(32))), str(path))
    except wgconfig.ConfigError:
        return None
    if cfg.peer(server_key) is None:
        return None
    return ClientFile(peer.friendly_name, path, text)


def _client_cfg(client: ClientFile) -> Config:
    return wgconfig.parse(client.text.text.replace(PLACEHOLDER_PRIVATE_KEY, keys.to_base64(bytes(32))),
                          str(client.path))


def _save_client(client: ClientFile) -> None:
    _client_cfg(client)  # check before writing
    wgconfig.write_private_file(client.path, client.text.text)


def parse_client_interfaces(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, iface = item.rpartition("=")
        if not eq or not name or not iface:
            raise ProvisionError(f"--apply-client takes NAME=IFACE: {item!r}")
        out[name] = iface
    return out


# --------------------------------------------------------------------------------------------------------
# Preshared keys


@dataclass
class PskRotation:
    peer: PeerConfig
    client_path: Path | None
    client_interface: str | None = None


@locked
def rotate_psk(
    target: Target,
    peers: Sequence[str] | None = None,
    *,
    psk: bytes | None = None,
    client_interfaces: dict[str, str] | None = None,
    audit: AuditLog | None = None,
) -> list[PskRotation]:
    """Rotate the PSK of `peers` (names or public keys; default: every peer with an issued client
    configuration). `psk` given: exactly one peer."""
    client_interfaces = client_interfaces or {}
    server = ConfigText.load(target.path)
    cfg = server.parse()
    server_key = server_public_key(cfg)
    if peers:
        selected = [find_peer(cfg, who) for who in peers]
    else:
        # Unnamed: only the peers whose other end this host manages (an issued client configuration). A peer
        # configured elsewhere would lose the tunnel at its next handshake; name it explicitly to include it.
        selected = [p for p in cfg.peers if issued_client(target, p, server_key) is not None]
    if psk is not None and len(selected) != 1:
        raise ProvisionError("an externally supplied PSK is for exactly one peer: name it with --peer")
    if not selected:
        return []
    new_keys: dict[bytes, bytes] = {}
    clients: list[ClientFile | None] = []
    for peer in selected:
        new = psk if psk is not None else keys.generate_preshared_key()
        new_keys[peer.public_key] = new
        server.set_value(server.peer_range(peer.public_key), "PresharedKey", keys.to_base64(new),
                         after="PublicKey")
        client = issued_client(target, peer, server_key)
        if client is not None:
            client.text.set_value(client.server_peer_range(server_key), "PresharedKey", keys.to_base64(new),
                                  after="PublicKey")
            _client_cfg(client)
        clients.append(client)
    server.parse()

    # One request for the server: every selected peer's new PSK at once, or none of them.
    if interface_running(target.interface):
        uapi.apply(target.interface, uapi.DeviceChange(peers=[
            uapi.PeerChange(public_key=pub, update_only=True, preshared_key=new) for pub, new in new_keys.items()
        ]))
    results = []
    for peer, client in zip(selected, clients, strict=True):
        iface = client_interfaces.get(peer.friendly_name or "") if client_interfaces else None
        if iface is not None:
            uapi.apply(iface, uapi.DeviceChange(peers=[uapi.PeerChange(
                public_key=server_key, update_only=True, preshared_key=new_keys[peer.public_key])]))
        results.append(PskRotation(peer, client.path if client else None, iface))
    server.save(target.path)
    for client in clients:
        if client is not None:
            _save_client(client)
    if audit is not None:
        for r in results:
            audit.event("psk_changed", actor="cli", public_key=keys.to_base64(r.peer.public_key),
                        name=r.peer.friendly_name, interface=target.interface,
                        source="external" if psk is not None else "generated",
                        client_config_updated=r.client_path is not None)
    return results


def read_psk(text: str) -> bytes:
    """A PSK in base64 (as `wg genpsk` and Rosenpass write it), surrounding whitespace ignored."""
    try:
        return keys.from_base64(text.strip())
    except keys.InvalidKeyError:
        raise ProvisionError("the supplied preshared key is not a base64 key of 32 bytes") from None


# --------------------------------------------------------------------------------------------------------
# Client static keys


@dataclass
class ClientKeyRotation:
    name: str
    old_public_key: bytes
    new_public_key: bytes
    client_path: Path | None
    grace_until: dt.datetime
    client_text: str | None = field(repr=False)  # the re-issued configuration (None: the client brought its key)


@locked
def rotate_client_key(
    target: Target,
    who: str,
    *,
    grace: dt.timedelta = DEFAULT_GRACE,
    new_public_key: bytes | None = None,
    client_interface: str | None = None,
    audit: AuditLog | None = None,
    clock: Callable[[], float] = time.time,
) -> ClientKeyRotation:
    """Start a client-key rotation. `new_public_key`: the client made its own new key pair (this host never
    sees a client private key); the PSK then stays as it is, so the client only swaps its private key."""
    server = ConfigText.load(target.path)
    cfg = server.parse()
    server_key = server_public_key(cfg)
    old = find_peer(cfg, who)
    if "rotating_to" in old.metadata or "rotating_from" in old.metadata:
        raise ProvisionError(f"peer {peer_label(old)!r} is being rotated already: run `wgpy rotate finish`")
    client = issued_client(target, old, server_key)
    client_brings_key = new_public_key is not None
    if not client_brings_key and (client is None or PLACEHOLDER_PRIVATE_KEY in client.text.text):
        raise ProvisionError(
            f"this host did not issue {peer_label(old)!r}'s private key: the client makes its new key pair and "
            "brings the public key (`wgpy rotate client-key ... --public-key KEY`)"
        )
    new_private: bytes | None = None
    if new_public_key is None:
        new_private = keys.generate_private_key()
        new_public = keys.public_key(new_private)
        new_psk: bytes | None = keys.generate_preshared_key()
    else:
        new_public = new_public_key
        new_psk = old.preshared_key
    if cfg.peer(new_public) is not None or new_public == server_key:
        raise ProvisionError("that public key is in use already")
    until = _utcnow(clock) + grace
    name = old.friendly_name or "peer"

    server.set_metadata(server.peer_range(old.public_key), "rotating_to", keys.to_base64(new_public))
    block = [
        "[Peer]",
        f"# friendly_name = {name}",
        f"# rotating_from = {keys.to_base64(old.public_key)}",
        f"# grace_until = {until.isoformat().replace('+00:00', 'Z')}",
        f"PublicKey = {keys.to_base64(new_public)}",
    ]
    if new_psk is not None:
        block.append(f"PresharedKey = {keys.to_base64(new_psk)}")
    server.append_block(block)
    server.parse()

    if client is not None and new_private is not None:
        client.text.set_value(client.text.interface_range(), "PrivateKey", keys.to_base64(new_private))
        client.text.set_value(client.server_peer_range(server_key), "PresharedKey",
                              keys.to_base64(new_psk) if new_psk else None, after="PublicKey")
        _client_cfg(client)
    server.save(target.path)
    if client is not None and new_private is not None:
        _save_client(client)
    sync_live(target.interface, server.parse())
    if client_interface is not None and new_private is not None:
        uapi.apply(client_interface, uapi.DeviceChange(
            private_key=new_private,
            peers=[uapi.PeerChange(public_key=server_key, update_only=True, preshared_key=new_psk)],
        ))
    if audit is not None:
        audit.event("key_rotated", actor="cli", old_public_key=keys.to_base64(old.public_key),
                    new_public_key=keys.to_base64(new_public), name=name, interface=target.interface,
                    stage="started", grace_until=until.isoformat(),
                    generated_by="client" if client_brings_key else "wgpy")
    return ClientKeyRotation(name, old.public_key, new_public, client.path if client else None, until,
                             client.text.text if client is not None and new_private is not None else None)


@dataclass
class FinishedRotation:
    name: str
    old_public_key: bytes
    new_public_key: bytes
    reason: str  # "handshake" or "grace expired"


def _grace_until(peer: PeerConfig) -> dt.datetime:
    raw = peer.metadata.get("grace_until", "")
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ProvisionError(f"peer {peer_label(peer)!r}: bad grace_until {raw!r}") from None


@locked
def finish_rotations(
    target: Target, *, audit: AuditLog | None = None, clock: Callable[[], float] = time.time,
    force: bool = False,
) -> list[FinishedRotation]:
    """Complete every pending client-key rotation whose new key has handshaken (or whose grace is over)."""
    server = ConfigText.load(target.path)
    cfg = server.parse()
    pending = [p for p in cfg.peers if "rotating_from" in p.metadata]
    if not pending:
        return []
    running = interface_running(target.interface)
    live = {p.public_key: p for p in uapi.get(target.interface).peers} if running else {}
    now = _utcnow(clock)
    done: list[FinishedRotation] = []
    change = uapi.DeviceChange()
    for new in pending:
        old_key = keys.from_base64(new.metadata["rotating_from"])
        old = cfg.peer(old_key)
        state = live.get(new.public_key)
        if state is not None and state.last_handshake[0] > 0:
            reason = "handshake"
        elif force or now >= _grace_until(new):
            reason = "grace expired" if not force else "forced"
        else:
            continue
        addresses = list(old.allowed_ips) if old is not None else []
        new_range = server.peer_range(new.public_key)
        server.set_value(new_range, "AllowedIPs", ", ".join(str(n) for n in addresses) or None)
        new_range = server.peer_range(new.public_key)
        server.set_metadata(new_range, "rotating_from", None)
        server.set_metadata(server.peer_range(new.public_key), "grace_until", None)
        if old is not None:
            server.remove_peer(old_key)
            change.peers.append(uapi.PeerChange(public_key=old_key, remove=True))
        change.peers.append(uapi.PeerChange(public_key=new.public_key, update_only=True,
                                            replace_allowed_ips=True, allowed_ips=addresses))
        done.append(FinishedRotation(new.friendly_name or "", old_key, new.public_key, reason))
    if not done:
        return []
    server.parse()
    if running:
        # Removing the old peer and giving its prefixes to the new one in one request: no instant where the
        # addresses belong to nobody or to both.
        uapi.apply(target.interface, change)
    server.save(target.path)
    if audit is not None:
        for d in done:
            audit.event("key_rotated", actor="cli", old_public_key=keys.to_base64(d.old_public_key),
                        new_public_key=keys.to_base64(d.new_public_key), name=d.name,
                        interface=target.interface, stage="finished", reason=d.reason)
    return done


# --------------------------------------------------------------------------------------------------------
# Server static key


@dataclass
class ServerKeyRotation:
    old_public_key: bytes
    new_public_key: bytes
    reissued: list[Path]
    not_reissued: list[str]  # peers whose configuration this host did not issue


@locked
def rotate_server_key(
    target: Target, *, client_interfaces: dict[str, str] | None = None, audit: AuditLog | None = None,
) -> ServerKeyRotation:
    client_interfaces = client_interfaces or {}
    server = ConfigText.load(target.path)
    cfg = server.parse()
    old_key = server_public_key(cfg)
    new_private = keys.generate_private_key()
    new_public = keys.public_key(new_private)
    server.set_value(server.interface_range(), "PrivateKey", keys.to_base64(new_private))
    clients: list[ClientFile] = []
    missing: list[str] = []
    for peer in cfg.peers:
        client = issued_client(target, peer, old_key)
        if client is None:
            missing.append(peer_label(peer))
            continue
        start, end = client.server_peer_range(old_key)
        client.text.set_value((start, end), "PublicKey", keys.to_base64(new_public))
        _client_cfg(client)
        clients.append(client)
    server.parse()
    server.save(target.path)
    for client in clients:
        _save_client(client)
    if interface_running(target.interface):
        uapi.apply(target.interface, uapi.DeviceChange(private_key=new_private))
    for name, iface in client_interfaces.items():
        find_peer(cfg, name)  # only clients of this server
        state = uapi.get(iface)
        old_peer = next((p for p in state.peers if p.public_key == old_key), None)
        if old_peer is None:
            raise ProvisionError(f"client interface {iface} has no peer for this server")
        uapi.apply(iface, uapi.DeviceChange(peers=[
            uapi.PeerChange(public_key=old_key, remove=True),
            uapi.PeerChange(public_key=new_public, preshared_key=old_peer.preshared_key or bytes(32),
                            endpoint=old_peer.endpoint,
                            persistent_keepalive=old_peer.persistent_keepalive,
                            allowed_ips=list(old_peer.allowed_ips)),
        ]))
    if audit is not None:
        audit.event("private_key_changed", actor="cli", old_public_key=keys.to_base64(old_key),
                    new_public_key=keys.to_base64(new_public), interface=target.interface,
                    reissued=[c.name for c in clients], not_reissued=missing)
    return ServerKeyRotation(old_key, new_public, [c.path for c in clients], missing)
