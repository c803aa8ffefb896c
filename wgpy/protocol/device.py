"""The WireGuard device as a sans-I/O state machine.

A :class:`Device` owns the local static key, the peers, the cryptokey routing table and the session index table.
Callers feed it inputs — datagrams that arrived from the network, IP packets that want to leave through the
tunnel, the passage of time — and collect outputs: datagrams to send (grouped per endpoint, ready for UDP GSO),
inner packets to hand to the TUN device, and the next moment it needs a :meth:`Device.tick`. Nothing here reads a
clock: ``now`` is a monotonic time in seconds and ``wall`` the Unix time (only used for TAI64N timestamps and the
"latest handshake" shown to users).

The hot path is batched: :meth:`Device.send` groups packets per peer and runs the per-peer bookkeeping (session
freshness, timers, output grouping) once per peer per call; :meth:`Device.receive` decrypts each datagram but runs
timers and roaming once per peer per call. The timer rules follow Linux's ``timers.c`` event for event.
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidTag

from wgpy.protocol import constants as C
from wgpy.protocol.allowedips import AllowedIPs
from wgpy.protocol.cookie import CookieChecker, CookieGenerator, endpoint_source_bytes
from wgpy.protocol.crypto import CryptoError, clamp, generate_private_key
from wgpy.protocol.keypair import NONCE, Keypair
from wgpy.protocol.messages import (
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_HEADER,
    TRANSPORT_MIN_SIZE,
    CookieReply,
    Initiation,
    Response,
)
from wgpy.protocol.noise import (
    LocalStatic,
    RemoteStatic,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wgpy.protocol.peer import Endpoint, Peer, PeerTimers
from wgpy.protocol.ratelimiter import RateLimiter
from wgpy.protocol.replay import ReplayWindow
from wgpy.protocol.rng import RandomSource, SystemRandomSource
from wgpy.protocol.tai64n import tai64n

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Packets and datagrams may come as bytes or as memoryviews over the shell's receive buffers.
Buffer = bytes | memoryview

_TYPE_INITIATION = 1
_TYPE_RESPONSE = 2
_TYPE_COOKIE_REPLY = 3
_TYPE_TRANSPORT = 4
_HEADER_WORD = struct.Struct("<I")
_U16BE = struct.Struct(">H")
_ZEROS = bytes(16)
_ALL_SOURCES = bytes(4)  # the cookie budget's one bucket
# Linux's MAX_TIMER_HANDSHAKES: retries before giving up on a handshake attempt.
MAX_TIMER_HANDSHAKES = int(C.REKEY_ATTEMPT_TIME / C.REKEY_TIMEOUT)


class DropReason(Enum):
    """Why a datagram or packet was dropped. Every silent drop is counted under one of these."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown_type"
    BAD_MAC1 = "bad_mac1"
    BAD_MAC2 = "bad_mac2"
    RATE_LIMITED = "rate_limited"
    NO_PRIVATE_KEY = "no_private_key"
    HANDSHAKE_FAILED = "handshake_failed"
    STALE_TIMESTAMP = "stale_timestamp"
    INITIATION_FLOOD = "initiation_flood"
    UNEXPECTED_RESPONSE = "unexpected_response"
    COOKIE_REJECTED = "cookie_rejected"
    UNKNOWN_INDEX = "unknown_index"
    KEY_EXPIRED = "key_expired"
    REPLAY = "replay"
    DECRYPT_FAILED = "decrypt_failed"
    INVALID_INNER = "invalid_inner_packet"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    NO_ROUTE = "no_route"
    NO_ENDPOINT = "no_endpoint"
    STAGED_OVERFLOW = "staged_overflow"
    HANDSHAKE_GAVE_UP = "handshake_gave_up"
    LINK_DOWN = "link_down"


class EventKind(Enum):
    HANDSHAKE_INITIATED = "handshake_initiated"
    HANDSHAKE_COMPLETED = "handshake_completed"
    HANDSHAKE_REJECTED = "handshake_rejected"
    HANDSHAKE_GAVE_UP = "handshake_gave_up"
    ENDPOINT_CHANGED = "endpoint_changed"
    COOKIE_SENT = "cookie_sent"
    KEYS_ZEROED = "keys_zeroed"


@dataclass(frozen=True, slots=True)
class Event:
    """Something security-relevant happened; the daemon turns these into log and audit lines."""

    kind: EventKind
    peer: bytes | None = None  # public key (never a secret)
    detail: str = ""


@dataclass
class DeviceStats:
    drops: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))
    handshakes_initiated: int = 0
    handshakes_completed: int = 0
    handshake_responses_sent: int = 0
    cookie_replies_sent: int = 0
    cookie_replies_received: int = 0
    keepalives_sent: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    under_load_periods: int = 0

    def drop(self, reason: DropReason, count: int = 1) -> None:
        self.drops[reason] += count


@dataclass
class Tunables:
    """Every time constant and limit, so tests can shrink them. Defaults are the paper's and the references'."""

    rekey_after_time: float = C.REKEY_AFTER_TIME
    reject_after_time: float = C.REJECT_AFTER_TIME
    rekey_attempt_time: float = C.REKEY_ATTEMPT_TIME
    rekey_timeout: float = C.REKEY_TIMEOUT
    rekey_timeout_jitter: float = C.REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = C.KEEPALIVE_TIMEOUT
    rekey_after_messages: int = C.REKEY_AFTER_MESSAGES
    reject_after_messages: int = C.REJECT_AFTER_MESSAGES
    cookie_refresh_time: float = C.COOKIE_REFRESH_TIME
    handshake_initiation_rate: float = C.HANDSHAKE_INITIATION_RATE
    max_staged_packets: int = C.MAX_STAGED_PACKETS
    # Under-load detection. The references count the handshake messages waiting in their queue (more than 1/8 of
    # 4096). A single-threaded sans-I/O core has no queue; what it sees is how many handshake messages arrive per
    # unit of time, so it counts them in a one-second window, plus whatever backlog the caller reports. The default,
    # 1024 per second, is about a fifth of what one core completes (bench/bench_core.py) and far above what even
    # 10,000 peers rekeying every two minutes need (about 83 per second).
    under_load_handshakes: int = 1024
    under_load_after_time: float = C.UNDER_LOAD_AFTER_TIME
    # All cookie replies together, whatever their sources (a flood from many spoofed sources defeats the
    # per-source limit). At about 5 µs each this bounds the work and the reflected traffic a flood can cause.
    max_cookie_replies_per_second: int = 16384
    ratelimit_packets_per_second: float = C.PACKETS_PER_SECOND
    ratelimit_burst: int = C.PACKETS_BURSTABLE


class Device:
    """A WireGuard interface's protocol state. See the module docstring for the input/output model."""

    def __init__(
        self,
        *,
        rng: RandomSource | None = None,
        tunables: Tunables | None = None,
        mtu: int = C.DEFAULT_MTU,
    ) -> None:
        self.rng: RandomSource = rng or SystemRandomSource()
        self.t = tunables or Tunables()
        self.mtu = mtu
        self.local: LocalStatic | None = None
        self.listen_port = 0
        self.fwmark = 0
        self._peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        # Receiver index -> keypair (transport) or peer (handshake in flight); two maps so the transport hot path
        # needs no type test.
        self._keypairs: dict[int, Keypair] = {}
        self._handshakes: dict[int, Peer] = {}
        self.cookie_checker = CookieChecker(None, self.rng, self.t.cookie_refresh_time)
        self.ratelimiter = RateLimiter(
            packets_per_second=self.t.ratelimit_packets_per_second, burst=self.t.ratelimit_burst
        )
        # All cookie replies together, as one bucket: the per-source limit does not bind against a flood from many
        # spoofed sources, this bounds what such a flood can make us compute and send, whatever its spread.
        self.cookie_budget = RateLimiter(
            packets_per_second=self.t.max_cookie_replies_per_second, burst=self.t.max_cookie_replies_per_second
        )
        # Cookie replies are rate-limited per source too, so that spoofed floods cannot turn us into a reflector.
        self.cookie_ratelimiter = RateLimiter(
            packets_per_second=self.t.ratelimit_packets_per_second, burst=self.t.ratelimit_burst
        )
        self.stats = DeviceStats()
        self._heap: list[tuple[float, int, Peer]] = []
        self._heap_seq = 0
        self._out: list[tuple[Endpoint, list[bytes]]] = []
        self._packets: list[bytes] = []
        self._authenticated: set[Endpoint] = set()
        self.events: list[Event] | None = None  # set to [] to record events
        # Handshake-load accounting for under-load detection.
        self._hs_window_start = 0.0
        self._hs_window_count = 0
        self._last_under_load: float | None = None
        self.backlog_hint = 0
        #: Whether the interface is up. Taking it down erases every session, as Linux and wireguard-go do.
        self.link_up = True
        #: Called with (peer, ephemeral private key) each time we create an ephemeral key, for the debugging key log.
        self.keylog: Callable[[Peer, bytes], None] | None = None

    # ------------------------------------------------------------------ configuration

    @property
    def private_key(self) -> bytes | None:
        return self.local.private_key if self.local else None

    @property
    def public_key(self) -> bytes | None:
        return self.local.public_key if self.local else None

    def set_private_key(self, key: bytes | None, now: float) -> None:
        """Change the static identity: precompute every peer's static-static DH again and stop current sessions
        from sending, so that the next packet triggers a handshake under the new key (as the references do)."""
        if key is not None:
            if len(key) != C.KEY_LEN:
                raise ValueError("private key must be 32 bytes")
            key = clamp(key)  # as wireguard-go stores it, so `get` shows the key actually in use
        if key is not None and self.local is not None and key == self.local.private_key:
            return
        self.local = LocalStatic.from_private(key) if key is not None else None
        self.cookie_checker.set_local(self.local)
        if self.local is not None:
            # A peer with our own public key can never complete a handshake: the references drop it.
            own = self._peers.get(self.local.public_key)
            if own is not None:
                self.remove_peer(own.public_key)
        for peer in self._peers.values():
            self._refresh_remote(peer)
            for kp in (peer.next_keypair, peer.current):
                if kp is not None:
                    kp.send_valid = False
            self._clear_handshake(peer)

    def _refresh_remote(self, peer: Peer) -> None:
        peer.remote = RemoteStatic.create(self.local, peer.public_key, peer.preshared_key)
        peer.cookie = CookieGenerator(peer.remote)

    def add_peer(self, public_key: bytes, now: float) -> Peer:
        if len(public_key) != C.KEY_LEN:
            raise ValueError("public key must be 32 bytes")
        existing = self._peers.get(public_key)
        if existing is not None:
            return existing
        remote = RemoteStatic.create(self.local, public_key, None)
        peer = Peer(public_key=public_key, remote=remote, cookie=CookieGenerator(remote))
        peer.staged = type(peer.staged)(maxlen=self.t.max_staged_packets)
        self._peers[public_key] = peer
        return peer

    def get_peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def remove_peer(self, public_key: bytes) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed_ips.remove_by_peer(peer)
        self._stop_peer(peer)

    def _stop_peer(self, peer: Peer) -> None:
        """Forget the peer's sessions, handshake, waiting packets and timers (its configuration stays)."""
        self._zero_keys(peer)
        peer.staged.clear()
        peer.timers = PeerTimers()
        peer.scheduled = None

    def remove_all_peers(self) -> None:
        for key in list(self._peers):
            self.remove_peer(key)

    def set_preshared_key(self, peer: Peer, psk: bytes | None) -> None:
        """A new PSK applies to the next handshake; the running session keeps its keys (no packet is lost)."""
        if psk is not None and len(psk) != C.KEY_LEN:
            raise ValueError("preshared key must be 32 bytes")
        if psk == bytes(C.KEY_LEN):
            psk = None  # all zeros is how the UAPI says "no preshared key"
        peer.preshared_key = psk
        peer.remote = RemoteStatic.create(self.local, peer.public_key, psk)
        peer.cookie = CookieGenerator(peer.remote)

    def set_endpoint(self, peer: Peer, endpoint: Endpoint | None, now: float, wall: float = 0.0) -> None:
        """Set the endpoint; with no usable session, start a handshake at once rather than at the next timer."""
        peer.endpoint = endpoint
        if endpoint is None or self.local is None:
            return
        if peer.current is None or not peer.current.can_send(now):
            self._send_initiation(peer, now, wall, is_retry=False)

    def set_persistent_keepalive(self, peer: Peer, seconds: int, now: float, wall: float = 0.0) -> None:
        """Set the interval; when turned on, send a keepalive right away so a peer behind NAT becomes reachable."""
        if not 0 <= seconds <= 0xFFFF:
            raise ValueError("persistent keepalive must be 0..65535")
        peer.persistent_keepalive = seconds
        if seconds == 0:
            peer.timers.persistent_keepalive = None
        elif self.local is not None and peer.endpoint is not None:
            self._send_keepalive(peer, now, wall)

    def set_link_up(self, up: bool, now: float, wall: float) -> None:
        """Follow the interface going down or up.

        Down: like Linux's wg_stop and wireguard-go's Device.Down, every peer's keys, handshake, staged packets
        and timers are dropped, and datagrams are refused until the link is up again. Up: peers with a
        persistent keepalive send one at once (wg_open), so a peer behind NAT becomes reachable again.
        """
        if up == self.link_up:
            return
        self.link_up = up
        for peer in self._peers.values():
            if not up:
                self._stop_peer(peer)
                peer.last_initiation_sent = None
            elif peer.persistent_keepalive and peer.endpoint is not None and self.local is not None:
                self._send_keepalive(peer, now, wall)
        if not up:
            self._heap.clear()

    def add_allowed_ip(self, peer: Peer, network: Network) -> None:
        self.allowed_ips.insert(network, peer)

    def remove_allowed_ip(self, peer: Peer, network: Network) -> None:
        self.allowed_ips.remove(network, peer)

    def clear_allowed_ips(self, peer: Peer) -> None:
        self.allowed_ips.remove_by_peer(peer)

    # ------------------------------------------------------------------ outputs

    def take_datagrams(self) -> list[tuple[Endpoint, list[bytes]]]:
        out, self._out = self._out, []
        return out

    def take_packets(self) -> list[bytes]:
        out, self._packets = self._packets, []
        return out

    def take_events(self) -> list[Event]:
        if self.events is None:
            return []
        out, self.events = self.events, []
        return out

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, peer = heap[0]
            if peer.scheduled == deadline and self._peers.get(peer.public_key) is peer:
                return deadline
            heapq.heappop(heap)
        return None

    def _emit(self, endpoint: Endpoint, datagram: bytes) -> None:
        out = self._out
        if out and out[-1][0] == endpoint:
            out[-1][1].append(datagram)
        else:
            out.append((endpoint, [datagram]))

    def _event(self, kind: EventKind, peer: Peer | None, detail: str = "") -> None:
        if self.events is not None:
            self.events.append(Event(kind, peer.public_key if peer else None, detail))

    # ------------------------------------------------------------------ timers

    def _schedule(self, peer: Peer) -> None:
        """Make sure the heap will wake us by the peer's earliest deadline. Deadlines that move later need no
        push: the earlier entry fires, finds nothing expired, and reschedules (cheap on the per-packet path)."""
        deadline = peer.timers.earliest()
        if deadline is None:
            return
        if peer.scheduled is not None and peer.scheduled <= deadline:
            return
        peer.scheduled = deadline
        self._heap_seq += 1
        heapq.heappush(self._heap, (deadline, self._heap_seq, peer))

    def tick(self, now: float, wall: float) -> None:
        """Run every timer that has expired by ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, peer = heapq.heappop(heap)
            if peer.scheduled != deadline or self._peers.get(peer.public_key) is not peer:
                continue
            peer.scheduled = None
            self._run_timers(peer, now, wall)
            self._schedule(peer)

    def _run_timers(self, peer: Peer, now: float, wall: float) -> None:
        t = peer.timers
        if t.retransmit_handshake is not None and t.retransmit_handshake <= now:
            t.retransmit_handshake = None
            self._expired_retransmit_handshake(peer, now, wall)
        if t.send_keepalive is not None and t.send_keepalive <= now:
            t.send_keepalive = None
            self._send_keepalive(peer, now, wall)
            if t.need_another_keepalive:
                t.need_another_keepalive = False
                t.send_keepalive = now + self.t.keepalive_timeout
        if t.new_handshake is not None and t.new_handshake <= now:
            t.new_handshake = None
            # We sent data but heard nothing back for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT: the session may be dead.
            self._send_initiation(peer, now, wall, is_retry=False)
        if t.zero_key_material is not None and t.zero_key_material <= now:
            t.zero_key_material = None
            self._zero_keys(peer)
            self._event(EventKind.KEYS_ZEROED, peer)
        if t.persistent_keepalive is not None and t.persistent_keepalive <= now:
            t.persistent_keepalive = None
            if peer.persistent_keepalive:
                self._send_keepalive(peer, now, wall)

    def _expired_retransmit_handshake(self, peer: Peer, now: float, wall: float) -> None:
        t = peer.timers
        if t.handshake_attempts > int(self.t.rekey_attempt_time / self.t.rekey_timeout):
            # Give up: drop what was waiting for this handshake, and erase keys later if nothing new arrives.
            t.send_keepalive = None
            dropped = len(peer.staged)
            peer.staged.clear()
            if dropped:
                self.stats.drop(DropReason.HANDSHAKE_GAVE_UP, dropped)
            self._clear_handshake(peer)
            if t.zero_key_material is None:
                t.zero_key_material = now + self.t.reject_after_time * 3
            self._event(EventKind.HANDSHAKE_GAVE_UP, peer, f"after {t.handshake_attempts + 1} attempts")
            return
        t.handshake_attempts += 1
        self._send_initiation(peer, now, wall, is_retry=True)

    # Timer events, named as in Linux timers.c.

    def _timers_data_sent(self, peer: Peer, now: float) -> None:
        t = peer.timers
        if t.new_handshake is None:
            t.new_handshake = now + self.t.keepalive_timeout + self.t.rekey_timeout + self.rng.jitter(
                self.t.rekey_timeout_jitter
            )

    def _timers_data_received(self, peer: Peer, now: float) -> None:
        t = peer.timers
        if t.send_keepalive is None:
            t.send_keepalive = now + self.t.keepalive_timeout
        else:
            t.need_another_keepalive = True

    def _timers_any_authenticated_packet_sent(self, peer: Peer) -> None:
        peer.timers.send_keepalive = None

    def _timers_any_authenticated_packet_received(self, peer: Peer) -> None:
        peer.timers.new_handshake = None

    def _timers_any_authenticated_packet_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            peer.timers.persistent_keepalive = now + peer.persistent_keepalive

    def _timers_handshake_initiated(self, peer: Peer, now: float) -> None:
        peer.timers.retransmit_handshake = now + self.t.rekey_timeout + self.rng.jitter(self.t.rekey_timeout_jitter)

    def _timers_handshake_complete(self, peer: Peer, wall: float) -> None:
        t = peer.timers
        t.retransmit_handshake = None
        t.handshake_attempts = 0
        t.sent_lastminute_handshake = False
        peer.last_handshake_wall = wall

    def _timers_session_derived(self, peer: Peer, now: float) -> None:
        peer.timers.zero_key_material = now + self.t.reject_after_time * 3

    # ------------------------------------------------------------------ keys and sessions

    def _clear_handshake(self, peer: Peer) -> None:
        if peer.handshake_index is not None:
            self._handshakes.pop(peer.handshake_index, None)
        peer.handshake = None
        peer.handshake_index = None

    def _drop_keypair(self, kp: Keypair | None) -> None:
        if kp is not None and self._keypairs.get(kp.local_index) is kp:
            del self._keypairs[kp.local_index]

    def _zero_keys(self, peer: Peer) -> None:
        for kp in (peer.next_keypair, peer.current, peer.previous):
            self._drop_keypair(kp)
        peer.next_keypair = peer.current = peer.previous = None
        self._clear_handshake(peer)

    def _allocate_index(self) -> int:
        rng = self.rng
        while True:
            index = rng.index() & 0xFFFFFFFF
            if index not in self._keypairs and index not in self._handshakes:
                return index

    def _install_keypair(self, peer: Peer, kp: Keypair) -> None:
        """Rotate next/current/previous exactly like Linux's ``add_new_keypair``."""
        self._keypairs[kp.local_index] = kp
        if kp.is_initiator:
            if peer.next_keypair is not None:
                self._drop_keypair(peer.previous)
                peer.previous = peer.next_keypair
                peer.next_keypair = None
                self._drop_keypair(peer.current)
            else:
                self._drop_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = kp
        else:
            self._drop_keypair(peer.next_keypair)
            peer.next_keypair = kp
            self._drop_keypair(peer.previous)
            peer.previous = None

    def _confirm(self, peer: Peer, kp: Keypair, now: float, wall: float) -> None:
        """First authenticated data on a responder's ``next`` keypair: it becomes current (key confirmation)."""
        self._drop_keypair(peer.previous)
        peer.previous = peer.current
        peer.current = kp
        peer.next_keypair = None
        self._timers_handshake_complete(peer, wall)
        self.stats.handshakes_completed += 1
        self._event(EventKind.HANDSHAKE_COMPLETED, peer, "responder")
        if peer.staged:
            self._flush_staged(peer, now, wall)

    # ------------------------------------------------------------------ sending

    def send(self, packets: Iterable[Buffer], now: float, wall: float) -> None:
        """IP packets from the TUN device: route each to its peer, then encrypt per peer in one pass.

        Packets that must wait for a handshake are kept (staged) past this call, so a memoryview passed here must
        not be over a buffer the caller reuses. Datagrams given to :meth:`receive` are not kept.
        """
        lookup = self.allowed_ips.lookup_dst
        by_peer: dict[Peer, list[Buffer]] = {}
        no_route = 0
        # Segments of one TSO super-packet (and most batches) share a destination: remember the last lookup for
        # this call, which costs a slice and a compare instead of a longest-prefix match.
        last_key: Buffer | None = None
        last_batch: list[Buffer] | None = None
        for packet in packets:
            version = packet[0] >> 4 if packet else 0
            key = packet[16:20] if version == 4 else packet[24:40] if version == 6 else None
            if key is not None and key == last_key:
                if last_batch is None:
                    no_route += 1
                else:
                    last_batch.append(packet)
                continue
            peer = lookup(packet)
            last_key = key
            if peer is None:
                last_batch = None
                no_route += 1
                continue
            last_batch = by_peer.get(peer)
            if last_batch is None:
                last_batch = by_peer[peer] = [packet]
            else:
                last_batch.append(packet)
        if no_route:
            self.stats.drop(DropReason.NO_ROUTE, no_route)
        for peer, batch in by_peer.items():
            staged = peer.staged
            overflow = len(staged) + len(batch) - (staged.maxlen or 0)
            if overflow > 0:
                self.stats.drop(DropReason.STAGED_OVERFLOW, overflow)
            staged.extend(batch)
            self._flush_staged(peer, now, wall)

    def _send_keepalive(self, peer: Peer, now: float, wall: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._flush_staged(peer, now, wall)

    def _flush_staged(self, peer: Peer, now: float, wall: float) -> None:
        """Encrypt everything staged for ``peer`` with its current keypair, or start a handshake if there is none.

        This is the per-peer fixed cost of the send path; it is paid once per batch, not once per packet.
        """
        kp = peer.current
        if kp is None or not kp.can_send(now) or peer.endpoint is None or self.local is None:
            if peer.endpoint is None:
                return
            self._send_initiation(peer, now, wall, is_retry=False)
            return
        staged = peer.staged
        count = len(staged)
        if kp.send_counter + count > self.t.reject_after_messages:
            self._send_initiation(peer, now, wall, is_retry=False)
            return
        aead = kp.send_aead
        encrypt = aead.encrypt
        header = TRANSPORT_HEADER.pack
        nonce = NONCE.pack
        receiver = kp.remote_index
        counter = kp.send_counter
        mtu = self.mtu
        out: list[bytes] = []
        append = out.append
        keepalives = 0
        for packet in staged:
            n = len(packet)
            if n & 15 and n < mtu:  # padded to 16 bytes, but never past the MTU (full-size segments: never)
                pad = -n & 15
                packet = bytes(packet) + _ZEROS[: pad if n + pad <= mtu else mtu - n]
            elif not n:
                keepalives += 1
            append(header(_TYPE_TRANSPORT, receiver, counter) + encrypt(nonce(counter), packet, None))
            counter += 1
        staged.clear()
        sent_bytes = sum(map(len, out))
        data_packets = count - keepalives
        kp.send_counter = counter
        endpoint = peer.endpoint
        if self._out and self._out[-1][0] == endpoint:
            self._out[-1][1].extend(out)
        else:
            self._out.append((endpoint, out))
        peer.tx_bytes += sent_bytes
        peer.last_sent = now
        self.stats.packets_sent += data_packets
        if data_packets < count:
            self.stats.keepalives_sent += count - data_packets
        # Timers, once per batch.
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer)
        if data_packets:
            self._timers_data_sent(peer, now)
        # Keep the key fresh (timer rule 1): the initiator renews an old session, anyone renews after too many
        # messages.
        if counter > self.t.rekey_after_messages or (
            kp.is_initiator and now - kp.created >= self.t.rekey_after_time
        ):
            self._send_initiation(peer, now, wall, is_retry=False)
        self._schedule(peer)

    def _send_initiation(self, peer: Peer, now: float, wall: float, is_retry: bool) -> None:
        if not is_retry:
            peer.timers.handshake_attempts = 0
        if peer.last_initiation_sent is not None and now - peer.last_initiation_sent < self.t.rekey_timeout:
            return
        local = self.local
        if local is None or peer.remote.static_static is None:
            return
        peer.last_initiation_sent = now
        self._clear_handshake(peer)
        ephemeral = generate_private_key(self.rng)
        if self.keylog is not None:
            self.keylog(peer, ephemeral)
        index = self._allocate_index()
        message, state = create_initiation(local, peer.remote, ephemeral, index, tai64n(wall))
        peer.cookie.add_macs(message, now)
        peer.handshake = state
        peer.handshake_index = index
        self._handshakes[index] = peer
        self.stats.handshakes_initiated += 1
        self._event(EventKind.HANDSHAKE_INITIATED, peer)
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer)
        if peer.endpoint is not None:
            data = bytes(message)
            peer.tx_bytes += len(data)
            self._emit(peer.endpoint, data)
        else:
            self.stats.drop(DropReason.NO_ENDPOINT)
        self._timers_handshake_initiated(peer, now)
        self._schedule(peer)

    # ------------------------------------------------------------------ receiving

    def receive(self, datagrams: Iterable[tuple[Buffer, Endpoint]], now: float, wall: float) -> set[Endpoint]:
        """Datagrams from the network. Transport messages are decrypted in a tight loop; the per-peer work that
        follows (key confirmation, roaming, timers) runs once per peer per call.

        Returns the source endpoints from which a message authenticated in this call (for each peer, the last
        one): the shell may trust what it learnt about those sources (the local address they wrote to), and
        nothing about the others, as the references learn endpoints only from authenticated packets.

        Order of checks for transport data, as in the references: length and type, a known receiver index, a live
        keypair, a cheap look at the replay window, authentication, and only then check-and-mark the counter.
        """
        authenticated: set[Endpoint] = set()
        self._authenticated = authenticated
        if not self.link_up:
            if not isinstance(datagrams, list):
                datagrams = list(datagrams)
            self.stats.drop(DropReason.LINK_DOWN, len(datagrams))
            return authenticated
        keypairs = self._keypairs
        header = TRANSPORT_HEADER.unpack_from
        word = _HEADER_WORD.unpack_from
        u16 = _U16BE.unpack_from
        nonce = NONCE.pack
        drops = self.stats.drops
        emit = self._packets.append
        lookup_src = self.allowed_ips.lookup_src
        reject_time = self.t.reject_after_time
        # (never past the replay windows' own limit, so that a run below stays inside it)
        reject_messages = min(self.t.reject_after_messages, C.REJECT_AFTER_MESSAGES)
        # Per-peer accumulators [the peer's unconfirmed `next` keypair if a packet arrived on it, source, rx bytes,
        # data packets]; `state` is the current peer's, so a run of packets from one peer costs no dict lookup.
        touched: dict[Peer, list[Any]] = {}
        current: Peer | None = None
        state: list[Any] = []
        last_src: bytes | None = None
        last_src_peer: Peer | None = None
        # A batch is mostly runs of one session: everything that depends only on the keypair (and on `now`) is
        # looked up once per run of its receiver index. Keypairs and peers change only in _finish_receive and
        # in handshake processing, after which the run is forgotten.
        last_receiver = -1
        expired = on_next = False
        kp: Keypair | None = None
        peer: Peer | None = None
        may_accept = check_and_mark = decrypt = None
        # The open run: consecutive counters from run_first that authenticated and lie above everything the
        # keypair's replay window had accepted. The next one (run_next) is new by definition, so a batch of
        # in-order packets costs one compare each, and the run is marked in the window in one call when it ends
        # (another counter, another keypair, a handshake message, the end of the batch), before anything else
        # looks at the window. run_next is -1 when no run is open.
        replay: ReplayWindow | None = None
        run_first = run_next = -1
        for data, source in datagrams:
            size = len(data)
            if size < TRANSPORT_MIN_SIZE or data[0] != _TYPE_TRANSPORT:
                if size < 4:
                    drops[DropReason.MALFORMED] += 1
                    continue
                kind = word(data, 0)[0]
                if kind == _TYPE_TRANSPORT:
                    drops[DropReason.MALFORMED] += 1
                    continue
                if run_next >= 0:
                    replay.mark_range(run_first, run_next - 1)  # type: ignore[union-attr]
                    run_next = -1
                if touched:
                    # Keep the order of effects: a handshake message after data for the same peer must see the
                    # bookkeeping of that data.
                    self._finish_receive(touched, now, wall)
                    touched, current = {}, None
                self._receive_handshake_message(kind, data, source, now, wall)
                last_receiver = -1
                continue
            kind, receiver, counter = header(data, 0)
            if kind != _TYPE_TRANSPORT:  # non-zero reserved bytes
                drops[DropReason.UNKNOWN_TYPE] += 1
                continue
            if receiver != last_receiver:
                if run_next >= 0:
                    replay.mark_range(run_first, run_next - 1)  # type: ignore[union-attr]
                    run_next = -1
                kp = keypairs.get(receiver)
                if kp is None:
                    drops[DropReason.UNKNOWN_INDEX] += 1
                    continue
                last_receiver = receiver
                expired = now - kp.created >= reject_time
                replay = kp.replay
                may_accept, check_and_mark = replay.may_accept, replay.check_and_mark
                decrypt = kp.receive_aead.decrypt
                peer = kp.peer  # type: ignore[assignment]
                assert peer is not None
                on_next = kp is peer.next_keypair
            if expired or counter >= reject_messages:
                drops[DropReason.KEY_EXPIRED] += 1
                continue
            if counter == run_next:
                try:
                    plain = decrypt(nonce(counter), data[16:], None)  # type: ignore[misc]
                except InvalidTag:
                    drops[DropReason.DECRYPT_FAILED] += 1
                    continue
                run_next += 1
            else:
                if run_next >= 0:
                    replay.mark_range(run_first, run_next - 1)  # type: ignore[union-attr]
                    run_next = -1
                if not may_accept(counter):  # type: ignore[misc]
                    drops[DropReason.REPLAY] += 1
                    continue
                try:
                    plain = decrypt(nonce(counter), data[16:], None)  # type: ignore[misc]
                except InvalidTag:
                    drops[DropReason.DECRYPT_FAILED] += 1
                    continue
                if counter >= replay.next_new:  # type: ignore[union-attr]
                    run_first, run_next = counter, counter + 1
                elif not check_and_mark(counter):  # type: ignore[misc]
                    drops[DropReason.REPLAY] += 1
                    continue
            if peer is not current:
                current = peer
                found = touched.get(peer)  # type: ignore[arg-type]
                if found is None:
                    found = touched[peer] = [None, source, 0, 0]  # type: ignore[index]
                state = found
            if on_next:
                state[0] = kp
            state[1] = source
            state[2] += size
            if not plain:
                continue  # a keepalive
            # The inner packet: IPv4 or IPv6 with a length that fits, trimmed of its padding.
            n = len(plain)
            version = plain[0] >> 4
            if version == 4 and n >= 20:
                length = u16(plain, 2)[0]
                if length < 20 or length > n:
                    drops[DropReason.INVALID_INNER] += 1
                    continue
                key = plain[12:16]
            elif version == 6 and n >= 40:
                length = 40 + u16(plain, 4)[0]
                if length > n:
                    drops[DropReason.INVALID_INNER] += 1
                    continue
                key = plain[8:24]
            else:
                drops[DropReason.INVALID_INNER] += 1
                continue
            # Source filtering, with the last answer of this call remembered (a batch is mostly one flow).
            if key != last_src or peer is not last_src_peer:
                if lookup_src(plain) is not peer:
                    drops[DropReason.SOURCE_NOT_ALLOWED] += 1
                    continue
                last_src, last_src_peer = key, peer
            emit(plain if length == n else plain[:length])
            state[3] += 1
        if run_next >= 0:
            replay.mark_range(run_first, run_next - 1)  # type: ignore[union-attr]
        if touched:
            self._finish_receive(touched, now, wall)
        return authenticated

    def _finish_receive(self, touched: dict[Peer, list[Any]], now: float, wall: float) -> None:
        stats = self.stats
        for peer, (on_next, source, rx, data_count) in touched.items():
            peer.rx_bytes += rx
            peer.last_received = now
            stats.packets_received += data_count
            self._update_endpoint(peer, source)
            self._authenticated.add(source)
            next_keypair = peer.next_keypair
            if next_keypair is not None and on_next is next_keypair:
                self._confirm(peer, next_keypair, now, wall)
            self._timers_any_authenticated_packet_received(peer)
            self._timers_any_authenticated_packet_traversal(peer, now)
            if data_count:
                self._timers_data_received(peer, now)
            # Timer rule 3: the initiator renews shortly before the session would be rejected.
            current = peer.current
            if (
                current is not None
                and current.is_initiator
                and not peer.timers.sent_lastminute_handshake
                and now - current.created
                >= self.t.reject_after_time - self.t.keepalive_timeout - self.t.rekey_timeout
            ):
                peer.timers.sent_lastminute_handshake = True
                self._send_initiation(peer, now, wall, is_retry=False)
            self._schedule(peer)

    def _update_endpoint(self, peer: Peer, source: Endpoint) -> None:
        if peer.endpoint != source:
            old = peer.endpoint
            peer.endpoint = source
            if old is not None:
                self._event(EventKind.ENDPOINT_CHANGED, peer, f"{_fmt(old)} -> {_fmt(source)}")

    def note_backlog(self, handshake_messages_waiting: int) -> None:
        """Let the shell say how many handshake messages it knows are still waiting (e.g. in its socket batch)."""
        self.backlog_hint = handshake_messages_waiting

    def _under_load(self, now: float) -> bool:
        if now - self._hs_window_start >= 1.0:
            self._hs_window_start = now
            self._hs_window_count = 0
        self._hs_window_count += 1
        if self._hs_window_count + self.backlog_hint >= self.t.under_load_handshakes:
            if self._last_under_load is None or now - self._last_under_load >= self.t.under_load_after_time:
                self.stats.under_load_periods += 1
            self._last_under_load = now
            return True
        return self._last_under_load is not None and now - self._last_under_load < self.t.under_load_after_time

    def _receive_handshake_message(self, kind: int, data: Buffer, source: Endpoint, now: float, wall: float) -> None:
        if kind == _TYPE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
            return
        if kind == _TYPE_INITIATION:
            if len(data) != INITIATION_SIZE:
                self.stats.drop(DropReason.MALFORMED)
                return
        elif kind == _TYPE_RESPONSE:
            if len(data) != RESPONSE_SIZE:
                self.stats.drop(DropReason.MALFORMED)
                return
        else:
            self.stats.drop(DropReason.UNKNOWN_TYPE)
            return
        if self.local is None:
            self.stats.drop(DropReason.NO_PRIVATE_KEY)
            return
        # mac1 first: it needs only our public key, so garbage costs one keyed BLAKE2s and no DH.
        if not self.cookie_checker.check_mac1(data):
            self.stats.drop(DropReason.BAD_MAC1)
            return
        if self._under_load(now):
            source_bytes = endpoint_source_bytes(source[0], source[1])
            if not self.cookie_checker.check_mac2(data, source_bytes, now):
                ip = source_bytes[:-2]
                if self.cookie_budget.allow(_ALL_SOURCES, now) and self.cookie_ratelimiter.allow(ip, now):
                    sender = struct.unpack_from("<I", data, 4)[0]
                    reply = self.cookie_checker.create_reply(data, sender, source_bytes, now)
                    self._emit(source, reply)
                    self.stats.cookie_replies_sent += 1
                    self.stats.drop(DropReason.BAD_MAC2)
                else:
                    # One datagram, one drop: counted as rate-limited, not also as BAD_MAC2.
                    self.stats.drop(DropReason.RATE_LIMITED)
                return
            if not self.ratelimiter.allow(source_bytes[:-2], now):
                self.stats.drop(DropReason.RATE_LIMITED)
                return
        if kind == _TYPE_INITIATION:
            self._receive_initiation(data, source, now, wall)
        else:
            self._receive_response(data, source, now, wall)

    def _receive_cookie_reply(self, data: Buffer, now: float) -> None:
        reply = CookieReply.parse(data)
        if reply is None:
            self.stats.drop(DropReason.MALFORMED)
            return
        peer = self._handshakes.get(reply.receiver)
        if peer is None:
            kp = self._keypairs.get(reply.receiver)
            peer = kp.peer if kp is not None else None  # type: ignore[assignment]
        if peer is None or not peer.cookie.consume_reply(reply, now):
            self.stats.drop(DropReason.COOKIE_REJECTED)
            return
        self.stats.cookie_replies_received += 1

    def _lookup_remote(self, public_key: bytes) -> RemoteStatic | None:
        peer = self._peers.get(public_key)
        return peer.remote if peer is not None else None

    def _receive_initiation(self, data: Buffer, source: Endpoint, now: float, wall: float) -> None:
        message = Initiation.parse(data)
        local = self.local
        if message is None or local is None:
            self.stats.drop(DropReason.MALFORMED)
            return
        state = consume_initiation(local, message, self._lookup_remote)
        if state is None:
            self.stats.drop(DropReason.HANDSHAKE_FAILED)
            self._event(EventKind.HANDSHAKE_REJECTED, None, "initiation did not authenticate")
            return
        peer = self._peers[state.remote_static_public]
        if state.timestamp <= peer.latest_timestamp:
            self.stats.drop(DropReason.STALE_TIMESTAMP)
            self._event(EventKind.HANDSHAKE_REJECTED, peer, "replayed or stale timestamp")
            return
        if (
            peer.last_initiation_consumed is not None
            and now - peer.last_initiation_consumed < self.t.handshake_initiation_rate
        ):
            self.stats.drop(DropReason.INITIATION_FLOOD)
            self._event(EventKind.HANDSHAKE_REJECTED, peer, "initiations too frequent")
            return
        peer.latest_timestamp = state.timestamp
        peer.last_initiation_consumed = now
        self._update_endpoint(peer, source)
        self._authenticated.add(source)
        self._timers_any_authenticated_packet_received(peer)
        self._timers_any_authenticated_packet_traversal(peer, now)
        peer.rx_bytes += len(data)
        ephemeral = generate_private_key(self.rng)
        if self.keylog is not None:
            self.keylog(peer, ephemeral)
        index = self._allocate_index()
        try:
            response, keys = create_response(local, peer.remote, state, ephemeral, index)
        except CryptoError:
            self.stats.drop(DropReason.HANDSHAKE_FAILED)
            return
        peer.cookie.add_macs(response, now)
        kp = Keypair(peer, keys.send_key, keys.receive_key, index, keys.remote_index, False, now)
        self._install_keypair(peer, kp)
        out = bytes(response)
        peer.tx_bytes += len(out)
        self._emit(source, out)
        self.stats.handshake_responses_sent += 1
        self._timers_any_authenticated_packet_traversal(peer, now)
        self._timers_any_authenticated_packet_sent(peer)
        self._timers_session_derived(peer, now)
        self._schedule(peer)

    def _receive_response(self, data: Buffer, source: Endpoint, now: float, wall: float) -> None:
        message = Response.parse(data)
        local = self.local
        if message is None or local is None:
            self.stats.drop(DropReason.MALFORMED)
            return
        peer = self._handshakes.get(message.receiver)
        if peer is None or peer.handshake is None or peer.handshake_index != message.receiver:
            self.stats.drop(DropReason.UNEXPECTED_RESPONSE)
            return
        keys = consume_response(local, peer.remote, peer.handshake, message)
        if keys is None:
            self.stats.drop(DropReason.HANDSHAKE_FAILED)
            self._event(EventKind.HANDSHAKE_REJECTED, peer, "response did not authenticate")
            return
        index = peer.handshake_index
        # The handshake's index is handed over to the keypair.
        self._handshakes.pop(index, None)
        peer.handshake = None
        peer.handshake_index = None
        self._update_endpoint(peer, source)
        self._authenticated.add(source)
        peer.rx_bytes += len(data)
        self._timers_any_authenticated_packet_received(peer)
        self._timers_any_authenticated_packet_traversal(peer, now)
        kp = Keypair(peer, keys.send_key, keys.receive_key, index, keys.remote_index, True, now)
        self._install_keypair(peer, kp)
        self._timers_session_derived(peer, now)
        self._timers_handshake_complete(peer, wall)
        self.stats.handshakes_completed += 1
        self._event(EventKind.HANDSHAKE_COMPLETED, peer, "initiator")
        # Confirm the session to the responder at once: staged data, or a keepalive.
        self._send_keepalive(peer, now, wall)
        self._schedule(peer)


def _fmt(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
