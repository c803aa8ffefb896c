"""Per-peer state: identity, keypairs, the handshake in flight, timers, staged packets, endpoint and counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from wgpy.protocol.constants import MAX_STAGED_PACKETS
from wgpy.protocol.cookie import CookieGenerator
from wgpy.protocol.keypair import Keypair
from wgpy.protocol.noise import InitiatorState, RemoteStatic

Endpoint = tuple[str, int]


@dataclass(slots=True)
class PeerTimers:
    """Absolute deadlines (monotonic seconds) of the five per-peer timers of Linux's ``timers.c``; None = not armed.

    Keeping them as plain deadlines instead of timer objects lets the sans-I/O device compute "the next moment I need
    a tick" and lets the simulation tests check exact send times.
    """

    retransmit_handshake: float | None = None
    send_keepalive: float | None = None
    new_handshake: float | None = None
    zero_key_material: float | None = None
    persistent_keepalive: float | None = None
    handshake_attempts: int = 0
    need_another_keepalive: bool = False
    sent_lastminute_handshake: bool = False

    def earliest(self) -> float | None:
        best: float | None = None
        for deadline in (
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ):
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best


@dataclass(slots=True, eq=False)
class Peer:
    """One configured peer. Identity is by object (``eq=False``) so peers can key dicts and the routing table."""

    public_key: bytes
    remote: RemoteStatic = field(repr=False)
    cookie: CookieGenerator = field(repr=False)
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0

    # Keypairs, as in the paper §5.4.6 / Linux noise.c: next is a responder's unconfirmed keypair.
    next_keypair: Keypair | None = field(default=None, repr=False)
    current: Keypair | None = field(default=None, repr=False)
    previous: Keypair | None = field(default=None, repr=False)

    # The handshake we initiated and are waiting a response for.
    handshake: InitiatorState | None = field(default=None, repr=False)
    handshake_index: int | None = None
    last_initiation_sent: float | None = None
    # Responder-side replay and flood protection (the greatest timestamp accepted, and when).
    latest_timestamp: bytes = bytes(12)
    last_initiation_consumed: float | None = None

    staged: deque[bytes | memoryview] = field(default_factory=lambda: deque(maxlen=MAX_STAGED_PACKETS), repr=False)
    timers: PeerTimers = field(default_factory=PeerTimers)
    # Where this peer's entry in the device's timer heap is scheduled (None = not scheduled).
    scheduled: float | None = None

    tx_bytes: int = 0
    rx_bytes: int = 0
    last_handshake_wall: float = 0.0
    last_received: float | None = None
    last_sent: float | None = None

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.next_keypair, self.current, self.previous) if kp is not None]
