"""Per-source token bucket for handshake messages under load (reference behaviour, not in the paper).

When the responder is under load, a handshake message whose mac2 proves the sender can receive at its source
address is still processed only if that source is within its rate: PACKETS_PER_SECOND (20) with a burst of
PACKETS_BURSTABLE (5), per IPv4 address and per IPv6 /64 (a host usually controls a whole /64, so counting single
IPv6 addresses would let one host multiply its rate). The algorithm is the Linux `ratelimiter.c` one: a bucket
holds up to PACKET_COST x PACKETS_BURSTABLE nanoseconds of "tokens", refills at one nanosecond per nanosecond,
and a packet costs PACKET_COST = 1 s / PACKETS_PER_SECOND; a new source starts with a full bucket. Accepting at
`tokens >= PACKET_COST` (the kernel's comparison) gives exactly 5 back to back; wireguard-go's strict `>` gives 4.

Time is integer nanoseconds internally (`now` rounded once), so refills and costs are exact and a simulated clock
in steps of 1/20 s behaves exactly like the kernel's.

Memory is bounded by `max_entries` (default 65,536, the kernel's limit on machines with more than 1 GiB of RAM).
Entries live in an OrderedDict kept in order of last use, so:

- gc removes entries idle for at least the time a bucket takes to refill completely (PACKETS_BURSTABLE /
  PACKETS_PER_SECOND = 0.25 s): such an entry is indistinguishable from a fresh one, so dropping it changes no
  decision. Idle entries are at the front, so gc costs O(entries removed), not O(table); `allow` runs it at most
  once per `gc_interval`.
- When the table is full, a new source takes the slot of the least recently used entry only if that entry is
  idle in the sense above; otherwise the new source is refused, like the kernel does, rather than letting a flood
  of spoofed sources grow memory without bound. Sources already in the table keep being served normally. Since
  the reference only consults the limiter for messages with a valid mac2 (a cookie bound to the source address),
  spoofed sources rarely get this far anyway; the bound is the backstop.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from wgpy.protocol.constants import PACKETS_BURSTABLE, PACKETS_PER_SECOND

NSEC_PER_SEC: Final = 1_000_000_000
# The kernel's limit (table_size 8192 x 8) on machines with more than 1 GiB of RAM.
DEFAULT_MAX_ENTRIES: Final = 65_536


class RateLimiter:
    """Token buckets keyed by IPv4 address or IPv6 /64. Not thread-safe: the core is single-threaded."""

    __slots__ = (
        "_entries",
        "_gc_interval",
        "_last_gc",
        "_max_entries",
        "_packet_cost",
        "_token_max",
    )

    def __init__(
        self,
        packets_per_second: float = PACKETS_PER_SECOND,
        burst: int = PACKETS_BURSTABLE,
        gc_interval: float = 1.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if not 0 < packets_per_second <= NSEC_PER_SEC or burst <= 0 or max_entries <= 0 or gc_interval < 0:
            raise ValueError("packets_per_second, burst and max_entries must be positive, gc_interval >= 0")
        self._packet_cost = int(NSEC_PER_SEC // packets_per_second)  # PACKET_COST
        self._token_max = self._packet_cost * burst  # TOKEN_MAX
        self._gc_interval = gc_interval
        self._max_entries = max_entries
        self._last_gc: float | None = None
        # key -> [last_time_ns, tokens], least recently used first.
        self._entries: OrderedDict[bytes, list[int]] = OrderedDict()

    def allow(self, source_ip: bytes, now: float) -> bool:
        """Charge one handshake message from `source_ip` (4 or 16 raw bytes) at time `now`; True if within rate."""
        n = len(source_ip)
        if n == 4:
            key = bytes(source_ip)
        elif n == 16:
            key = bytes(source_ip[:8])  # the /64
        else:
            raise ValueError(f"a source address is 4 or 16 bytes, not {n}")
        if self._last_gc is None or now - self._last_gc >= self._gc_interval:
            self.gc(now)
        now_ns = round(now * NSEC_PER_SEC)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            tokens = entry[1]
            if now_ns > entry[0]:
                # A clock that steps back earns nothing, and does not rewind last_time either (else stepping
                # forward again would be credited twice).
                tokens += now_ns - entry[0]
                if tokens > self._token_max:
                    tokens = self._token_max
                entry[0] = now_ns
            entries.move_to_end(key)
            if tokens >= self._packet_cost:
                entry[1] = tokens - self._packet_cost
                return True
            entry[1] = tokens
            return False
        if len(entries) >= self._max_entries:
            _, oldest = next(iter(entries.items()))
            if now_ns - oldest[0] < self._token_max:
                return False  # full of active sources: refuse newcomers rather than grow
            entries.popitem(last=False)
        entries[key] = [now_ns, self._token_max - self._packet_cost]
        return True

    def gc(self, now: float) -> None:
        """Forget sources idle long enough that their bucket is full again (a fresh entry would be identical)."""
        self._last_gc = now
        horizon = round(now * NSEC_PER_SEC) - self._token_max
        entries = self._entries
        while entries:
            _, oldest = next(iter(entries.items()))
            if oldest[0] > horizon:
                break
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every source."""
        self._entries.clear()
        self._last_gc = None

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"RateLimiter({len(self._entries)} sources)"
