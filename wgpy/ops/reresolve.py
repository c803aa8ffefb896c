"""Endpoint re-resolution: wireguard-tools' contrib ``reresolve-dns.sh``, built in.

WireGuard resolves a peer's host name once, when the configuration is applied. When a dynamic-DNS peer moves,
its sessions die and nothing resolves the name again. Like the contrib script we look at peers whose latest
handshake is older than 135 seconds (REKEY_AFTER_TIME + REKEY_TIMEOUT + a margin: a healthy session
re-handshakes every two minutes) and whose configured endpoint is a host name, resolve it again and set the
endpoint if the address changed (``update_only``, so a peer removed meanwhile is not recreated).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.ops.audit import AuditLog
from wgpy.ops.provision import Target
from wgpy.uapi import client as uapi

STALE_AFTER = 135.0


def is_host_name(endpoint: str) -> bool:
    host, _port = wgconfig.split_endpoint(endpoint)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return True
    return False


@dataclass
class Reresolved:
    public_key: bytes
    old: uapi.Endpoint | None
    new: uapi.Endpoint


def reresolve_once(
    target: Target, *, clock: Callable[[], float] = time.time, audit: AuditLog | None = None
) -> list[Reresolved]:
    cfg = wgconfig.load(str(target.path))
    state = uapi.get(target.interface)
    live = {p.public_key: p for p in state.peers}
    now = clock()
    changes: list[Reresolved] = []
    for peer in cfg.peers:
        current = live.get(peer.public_key)
        if current is None or not peer.endpoint or not is_host_name(peer.endpoint):
            continue
        if current.last_handshake[0] and now - current.last_handshake[0] <= STALE_AFTER:
            continue
        try:
            resolved = wgconfig.resolve_endpoint(peer.endpoint)
        except ValueError:
            continue  # the name does not resolve right now: try again next round, as the script does
        if resolved != current.endpoint:
            changes.append(Reresolved(peer.public_key, current.endpoint, resolved))
    if changes:
        uapi.apply(target.interface, uapi.DeviceChange(peers=[
            uapi.PeerChange(public_key=c.public_key, update_only=True, endpoint=c.new) for c in changes
        ]))
        if audit is not None:
            for c in changes:
                audit.event("endpoint_changed", actor="cli", public_key=keys.to_base64(c.public_key),
                            interface=target.interface, endpoint=uapi.format_endpoint(c.new),
                            old_endpoint=uapi.format_endpoint(c.old) if c.old else None, reason="reresolved")
    return changes


def reresolve_loop(target: Target, interval: float = 30.0, audit: AuditLog | None = None) -> None:
    while True:
        reresolve_once(target, audit=audit)
        time.sleep(interval)
