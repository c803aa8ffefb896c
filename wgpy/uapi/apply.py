"""Apply a validated ``set`` to a :class:`~wgpy.protocol.device.Device`, and produce ``get`` answers from one.

wireguard-go applies a ``set`` line by line while it reads it, so a refused line leaves everything before it
applied (a new peer with half its configuration, for instance). Here the request was parsed and validated in full
first (:mod:`wgpy.uapi.request`), and applying it cannot fail half-way:

1. the only steps that can fail for reasons outside the request — binding the new listen port and setting the
   fwmark on the sockets — run first, and the port is bound back if the fwmark then fails;
2. then every operation runs, in request order, through Device methods that accept every validated value;
3. as defence in depth against a bug in step 2, the configuration is snapshot before it and restored if anything
   raises, and the request answers -EIO.

The semantics are wireguard-go's, operation for operation: device keys first; ``replace_peers`` removes every
peer; a section for our own public key is ignored; ``remove=true`` removes the peer and ignores the rest of its
section; ``update_only=true`` on a peer that does not exist ignores the whole section (wireguard-go creates the
peer, then deletes it when it reaches ``update_only``: the same result, without the transient peer);
``replace_allowed_ips`` clears the peer's prefixes before the ones that follow; an all-zero key clears.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from wgpy.protocol.device import Device
from wgpy.protocol.peer import Endpoint, Peer
from wgpy.uapi import client
from wgpy.uapi.request import (
    EADDRINUSE,
    EIO,
    AddAllowedIP,
    PeerSection,
    RemovePeer,
    ReplaceAllowedIPs,
    ReplacePeers,
    SetEndpoint,
    SetFwmark,
    SetListenPort,
    SetPersistentKeepalive,
    SetPresharedKey,
    SetPrivateKey,
    SetRequest,
    UapiError,
    UpdateOnly,
)

log = logging.getLogger("wgpy.uapi")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class SocketControl:
    """What the daemon lets the apply step do to its UDP sockets. Both may raise OSError.

    ``rebind(port)`` binds the new port (0 = any) and returns the port actually bound; ``set_fwmark(mark)`` sets
    SO_MARK on every socket.
    """

    rebind: Callable[[int], int]
    set_fwmark: Callable[[int], None]


# --- configuration snapshots (for the restore path) ------------------------------------------------------------


@dataclass
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = field(repr=False)
    endpoint: Endpoint | None
    persistent_keepalive: int
    allowed_ips: list[Network]


@dataclass
class DeviceConfig:
    private_key: bytes | None = field(repr=False)
    listen_port: int
    fwmark: int
    peers: list[PeerConfig]


def snapshot(device: Device) -> DeviceConfig:
    return DeviceConfig(
        device.private_key, device.listen_port, device.fwmark,
        [
            PeerConfig(p.public_key, p.preshared_key, p.endpoint, p.persistent_keepalive,
                       list(device.allowed_ips.entries_for(p)))
            for p in device.peers()
        ],
    )


def restore(device: Device, config: DeviceConfig, now: float, wall: float) -> None:
    """Put the configuration back. Peers that were there keep their sessions; only what changed is touched."""
    if device.private_key != config.private_key:
        device.set_private_key(config.private_key, now)
    device.listen_port, device.fwmark = config.listen_port, config.fwmark
    wanted = {pc.public_key: pc for pc in config.peers}
    for peer in device.peers():
        if peer.public_key not in wanted:
            device.remove_peer(peer.public_key)
    for pc in config.peers:
        peer = device.get_peer(pc.public_key) or device.add_peer(pc.public_key, now)
        if peer.preshared_key != pc.preshared_key:
            device.set_preshared_key(peer, pc.preshared_key)
        peer.endpoint = pc.endpoint
        peer.persistent_keepalive = pc.persistent_keepalive
        if list(device.allowed_ips.entries_for(peer)) != pc.allowed_ips:
            device.clear_allowed_ips(peer)
            for network in pc.allowed_ips:
                device.add_allowed_ip(peer, network)


# --- set ---------------------------------------------------------------------------------------------------------


def apply_set(
    device: Device, request: SetRequest, now: float, wall: float, sockets: SocketControl | None = None
) -> None:
    """Apply ``request`` entirely or not at all (raises :class:`UapiError` and changes nothing)."""
    port = fwmark = None
    for op in request.device:
        if isinstance(op, SetListenPort):
            port = op.port
        elif isinstance(op, SetFwmark):
            fwmark = op.mark
    old_port, old_fwmark = device.listen_port, device.fwmark
    bound_port = old_port
    # Step 1: the fallible I/O. wireguard-go rebinds whenever the requested port differs from the bound one.
    if port is not None and port != old_port:
        if sockets is None:
            bound_port = port
        else:
            try:
                bound_port = sockets.rebind(port)
            except OSError as exc:
                raise UapiError(EADDRINUSE, f"failed to set listen_port: {exc.strerror or exc}")
    if fwmark is not None and fwmark != old_fwmark and sockets is not None:
        try:
            sockets.set_fwmark(fwmark)
        except OSError as exc:
            if bound_port != old_port:
                try:
                    sockets.rebind(old_port)
                except OSError:
                    log.error("could not bind listen port %d again after a failed fwmark change", old_port)
            # wireguard-go answers IpcErrorPortInUse here too.
            raise UapiError(EADDRINUSE, f"failed to update fwmark: {exc.strerror or exc}")

    # Step 2: the infallible part, with a snapshot to restore should a bug make it fail anyway.
    saved = snapshot(device)
    try:
        device.listen_port = bound_port
        if fwmark is not None:
            device.fwmark = fwmark
        for op in request.device:
            if isinstance(op, SetPrivateKey):
                device.set_private_key(op.key, now)
            elif isinstance(op, ReplacePeers):
                device.remove_all_peers()
        for section in request.peers:
            _apply_section(device, section, now, wall)
    except Exception:
        log.exception("UAPI set failed while applying; restoring the previous configuration")
        restore(device, saved, now, wall)
        if sockets is not None:
            try:
                if bound_port != old_port:
                    saved.listen_port = sockets.rebind(old_port)
                    device.listen_port = saved.listen_port
                if fwmark is not None and fwmark != old_fwmark:
                    sockets.set_fwmark(old_fwmark)
            except OSError:
                log.error("could not restore the UDP sockets")
        raise UapiError(EIO, "internal error while applying the configuration; nothing was changed")


def _apply_section(device: Device, section: PeerSection, now: float, wall: float) -> None:
    if section.public_key == device.public_key:
        return  # wireguard-go ignores a peer that is ourselves
    peer: Peer | None = device.get_peer(section.public_key)
    if peer is None:
        if section.update_only:
            return
        if section.ops and isinstance(section.ops[0], RemovePeer):
            return
        peer = device.add_peer(section.public_key, now)
    for op in section.ops:
        if isinstance(op, RemovePeer):
            device.remove_peer(section.public_key)
            return
        if isinstance(op, SetPresharedKey):
            device.set_preshared_key(peer, op.key)
        elif isinstance(op, SetEndpoint):
            device.set_endpoint(peer, op.endpoint, now, wall)
        elif isinstance(op, SetPersistentKeepalive):
            device.set_persistent_keepalive(peer, op.seconds, now, wall)
        elif isinstance(op, ReplaceAllowedIPs):
            device.clear_allowed_ips(peer)
        elif isinstance(op, AddAllowedIP):
            device.add_allowed_ip(peer, op.network)
        elif isinstance(op, UpdateOnly):
            pass


# --- get ---------------------------------------------------------------------------------------------------------


def format_endpoint(endpoint: Endpoint) -> str:
    """As wireguard-go prints it: the address in inet_ntop's form (IPv4-mapped addresses dotted, as Go does)."""
    host, port = endpoint
    return client.format_endpoint((client.canonical_host(host), port))


def format_get(device: Device) -> str:
    """The body of a ``get=1`` answer, key for key and in wireguard-go's order (without the ``errno`` line)."""
    lines: list[str] = []
    if device.private_key is not None:
        lines.append(f"private_key={device.private_key.hex()}")
    lines.append(f"listen_port={device.listen_port}")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}")
    for peer in device.peers():
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or bytes(32)).hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        sec, nsec = wall_to_timespec(peer.last_handshake_wall)
        lines.append(f"last_handshake_time_sec={sec}")
        lines.append(f"last_handshake_time_nsec={nsec}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        for network in device.allowed_ips.entries_for(peer):
            lines.append(f"allowed_ip={network}")
    return "".join(line + "\n" for line in lines)


def wall_to_timespec(wall: float) -> tuple[int, int]:
    if wall <= 0:
        return 0, 0
    sec = int(wall)
    nsec = min(round((wall - sec) * 1e9), 999_999_999)
    return sec, nsec


def format_stats(device: Device) -> str:
    """The body of wgpy's ``wgpy_stats=1`` answer: every drop counter and event counter, ``name=value``."""
    stats = device.stats
    lines = [f"drop_{reason.value}={count}" for reason, count in stats.drops.items()]
    for name, value in vars(stats).items():
        if isinstance(value, int):
            lines.append(f"{name}={value}")
    return "".join(line + "\n" for line in lines)
