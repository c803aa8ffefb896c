"""Peer expiry: ``# expires = YYYY-MM-DD`` on a ``[Peer]``, enforced by ``wgpy peer expire`` (on a timer).

A peer expiring on D works through D (UTC) and is removed on D+1: from the configuration file (so a restart
does not bring it back) and from the running interface in the same pass, with wg syncconf semantics so every
other peer keeps its session.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from wgpy import keys
from wgpy.config import Config, PeerConfig
from wgpy.ops.audit import AuditLog
from wgpy.ops.provision import ConfigText, ProvisionError, Target, locked, peer_label, sync_live


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def expiry_of(peer: PeerConfig) -> dt.date | None:
    raw = peer.metadata.get("expires")
    if raw is None:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ProvisionError(f"line {peer.line}: peer {peer_label(peer)!r}: bad expires {raw!r}") from None


def expired_peers(cfg: Config, today: dt.date) -> list[PeerConfig]:
    out = []
    for peer in cfg.peers:
        when = expiry_of(peer)
        if when is not None and when < today:
            out.append(peer)
    return out


@dataclass
class ExpireResult:
    removed: list[PeerConfig]
    applied_live: bool


@locked
def expire(target: Target, today: dt.date | None = None, audit: AuditLog | None = None,
           dry_run: bool = False) -> ExpireResult:
    text = ConfigText.load(target.path)
    cfg = text.parse()
    gone = expired_peers(cfg, today or today_utc())
    if not gone or dry_run:
        return ExpireResult(gone, False)
    for peer in gone:
        text.remove_peer(peer.public_key)
    text.save(target.path)
    change = sync_live(target.interface, text.parse())
    if audit is not None:
        for peer in gone:
            audit.event("peer_removed", actor="cli", public_key=keys.to_base64(peer.public_key),
                        name=peer.friendly_name, interface=target.interface, reason="expired",
                        expired=peer.metadata.get("expires"))
    return ExpireResult(gone, change is not None)
