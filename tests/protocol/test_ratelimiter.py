"""Tests for the handshake rate limiter, all on a simulated clock (time is an argument)."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.protocol.constants import PACKETS_BURSTABLE, PACKETS_PER_SECOND
from wgpy.protocol.ratelimiter import RateLimiter

V4 = bytes([192, 0, 2, 1])
V4_OTHER = bytes([192, 0, 2, 2])
V6 = bytes.fromhex("20010db8000000010000000000000001")
V6_SAME_64 = bytes.fromhex("20010db800000001ffffffffffffffff")
V6_OTHER_64 = bytes.fromhex("20010db8000000020000000000000001")
COST = 1 / PACKETS_PER_SECOND


def v4(i: int) -> bytes:
    return (0x0A000000 + i).to_bytes(4, "big")


@pytest.mark.parametrize("source", [V4, V6])
def test_kernel_selftest_sequence(source: bytes) -> None:
    """The expected_results table of Linux's selftest/ratelimiter.c: a burst of 5, then one per 1/20 s."""
    expected = [(True, 0.0)] * PACKETS_BURSTABLE + [
        (False, 0.0),
        (True, COST),
        (False, 0.0),
        (True, 2 * COST),
        (True, 0.0),
        (False, 0.0),
    ]
    limiter = RateLimiter()
    now = 1000.0
    for i, (allowed, sleep) in enumerate(expected):
        now += sleep
        assert limiter.allow(source, now) is allowed, i


def test_burst_then_refill_rate() -> None:
    """Hammering at 1000/s for 10 s gets the burst plus exactly one per PACKET_COST of elapsed time."""
    limiter = RateLimiter()
    allowed = sum(limiter.allow(V4, 50.0 + k / 1000) for k in range(10_000))
    # First packet at t0, last at t0 + 9.999 s: 5 from the burst, then floor(9.999 * 20) = 199 refills.
    assert allowed == PACKETS_BURSTABLE + 199


def test_steady_rate_at_the_limit_is_always_allowed() -> None:
    limiter = RateLimiter()
    assert all(limiter.allow(V4, 7.0 + k * COST) for k in range(1000))


def test_bucket_never_holds_more_than_the_burst() -> None:
    limiter = RateLimiter()
    assert limiter.allow(V4, 0.0)
    # A long quiet period refills to the burst, not beyond.
    results = [limiter.allow(V4, 3600.0) for _ in range(PACKETS_BURSTABLE + 3)]
    assert results == [True] * PACKETS_BURSTABLE + [False] * 3


def test_sources_are_independent() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(V4, 1.0)
    assert not limiter.allow(V4, 1.0)
    assert limiter.allow(V4_OTHER, 1.0)
    assert limiter.allow(V6, 1.0)


def test_ipv6_is_limited_per_64() -> None:
    limiter = RateLimiter()
    sources = [V6, V6_SAME_64] * PACKETS_BURSTABLE
    results = [limiter.allow(s, 2.0) for s in sources]
    assert results == [True] * PACKETS_BURSTABLE + [False] * PACKETS_BURSTABLE
    assert limiter.allow(V6_OTHER_64, 2.0)
    assert len(limiter) == 2


def test_ipv4_and_ipv6_keys_do_not_collide() -> None:
    limiter = RateLimiter()
    mapped_prefix = bytes(16)  # ::, whose first 8 bytes would equal no IPv4 key anyway
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(bytes(4), 3.0)
    assert not limiter.allow(bytes(4), 3.0)
    assert limiter.allow(mapped_prefix, 3.0)


def test_custom_rate_and_burst() -> None:
    limiter = RateLimiter(packets_per_second=2, burst=1)
    assert limiter.allow(V4, 0.0)
    assert not limiter.allow(V4, 0.4)
    assert limiter.allow(V4, 0.5)


def test_gc_frees_idle_entries() -> None:
    limiter = RateLimiter()
    for i in range(100):
        assert limiter.allow(v4(i), 10.0)
    for i in range(50, 100):
        limiter.allow(v4(i), 10.2)
    assert len(limiter) == 100
    limiter.gc(10.25)  # the first 50 have been idle for a full refill (5 / 20 s)
    assert len(limiter) == 50
    limiter.gc(10.449999999)  # one nanosecond short
    assert len(limiter) == 50
    limiter.gc(10.45)
    assert len(limiter) == 0


def test_allow_runs_gc_at_most_once_per_interval() -> None:
    limiter = RateLimiter(gc_interval=1.0)
    for i in range(10):
        limiter.allow(v4(i), 0.0)  # the first call also runs gc, at t=0
    limiter.allow(v4(100), 0.9)  # idle ones are due, but gc is not
    assert len(limiter) == 11
    limiter.allow(v4(101), 1.0)  # gc runs: the ten from t=0 go, the one from t=0.9 stays
    assert len(limiter) == 2


def test_gc_does_not_change_decisions_for_returning_sources() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(V4, 0.0)
    limiter.gc(1.0)
    assert len(limiter) == 0
    results = [limiter.allow(V4, 1.0) for _ in range(PACKETS_BURSTABLE + 1)]
    assert results == [True] * PACKETS_BURSTABLE + [False]


def test_memory_is_bounded_under_a_spoofed_flood() -> None:
    limiter = RateLimiter(max_entries=1000)
    assert limiter.allow(V4, 0.0)  # a legitimate source, already known
    admitted = sum(limiter.allow(v4(1 + i), 0.001 + i * 1e-7) for i in range(20_000))
    assert admitted == 999
    assert len(limiter) == 1000
    # Known sources keep being served at their rate during the flood.
    assert limiter.allow(V4, 0.01)
    # Memory does not grow with the number of refused sources.
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(50_000):
        limiter.allow(v4(100_000 + i), 0.02)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(limiter) == 1000
    assert after - before < 10_000
    # Once entries have been idle long enough, newcomers get their slots back.
    assert limiter.allow(v4(999_999), 0.5)
    assert len(limiter) <= 1000


def test_full_table_evicts_an_idle_entry_for_a_newcomer() -> None:
    limiter = RateLimiter(max_entries=2, gc_interval=1000.0)
    assert limiter.allow(v4(1), 0.0)
    assert limiter.allow(v4(2), 0.2)
    assert not limiter.allow(v4(3), 0.2)
    assert limiter.allow(v4(3), 0.25)  # v4(1) idle 0.25 s: evicted
    assert len(limiter) == 2
    assert not limiter.allow(v4(4), 0.3)  # v4(2) idle only 0.1 s


def test_clock_going_backwards_grants_nothing() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(V4, 100.0)
    assert not limiter.allow(V4, 50.0)
    assert not limiter.allow(V4, 100.0)
    assert limiter.allow(V4, 100.0 + COST)


def test_bad_arguments() -> None:
    limiter = RateLimiter()
    with pytest.raises(ValueError):
        limiter.allow(b"\x01\x02\x03", 0.0)
    with pytest.raises(ValueError):
        RateLimiter(packets_per_second=0)
    with pytest.raises(ValueError):
        RateLimiter(max_entries=0)


def test_float_rate() -> None:
    """The device's tunables hold the rate as a float; 20.0 must behave exactly like 20."""
    limiter = RateLimiter(packets_per_second=float(PACKETS_PER_SECOND))
    results = [limiter.allow(V4, 0.0) for _ in range(PACKETS_BURSTABLE + 1)]
    assert results == [True] * PACKETS_BURSTABLE + [False]
    assert limiter.allow(V4, COST)


def test_clear() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        limiter.allow(V4, 0.0)
    limiter.clear()
    assert len(limiter) == 0
    assert limiter.allow(V4, 0.0)


class NaiveBucket:
    """Float-free model of one bucket as the kernel computes it, never forgetting a source."""

    def __init__(self) -> None:
        self.cost = 1_000_000_000 // PACKETS_PER_SECOND
        self.max = self.cost * PACKETS_BURSTABLE
        self.state: dict[bytes, tuple[int, int]] = {}

    def allow(self, key: bytes, now_ns: int) -> bool:
        if key not in self.state:
            self.state[key] = (now_ns, self.max - self.cost)
            return True
        last, tokens = self.state[key]
        tokens = min(self.max, tokens + max(0, now_ns - last))
        ok = tokens >= self.cost
        self.state[key] = (now_ns, tokens - self.cost if ok else tokens)
        return ok


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        # (source index, ns since the previous event), with the refill boundaries (one cost, a full bucket)
        st.tuples(
            st.integers(0, 5),
            st.one_of(
                st.integers(0, 400_000_000),
                st.sampled_from([49_999_999, 50_000_000, 50_000_001, 249_999_999, 250_000_000, 250_000_001]),
            ),
        ),
        max_size=200,
    ),
    gc_interval=st.sampled_from([0.0, 0.1, 1.0, 1e9]),
)
def test_gc_never_changes_a_decision(events: list[tuple[int, int]], gc_interval: float) -> None:
    """Whatever gc removes, decisions are those of a model that remembers every source forever."""
    limiter = RateLimiter(gc_interval=gc_interval)
    model = NaiveBucket()
    now_ns = 1_000_000_000
    sources = [v4(0), v4(1), V6, V6_SAME_64, V6_OTHER_64, V4]
    for index, delta in events:
        now_ns += delta
        source = sources[index]
        key = source[:8] if len(source) == 16 else source
        assert limiter.allow(source, now_ns / 1e9) is model.allow(key, now_ns)
