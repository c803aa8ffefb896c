"""SystemRandomSource: the randomness the daemon feeds the core."""

from __future__ import annotations

from wgpy.protocol.rng import SystemRandomSource


def test_jitter_stays_in_its_interval_and_spreads_over_it() -> None:
    rng = SystemRandomSource()
    draws = [rng.jitter(0.334) for _ in range(5000)]
    assert all(0.0 <= d < 0.334 for d in draws)
    # Uniform over [0, 0.334): each tenth of the interval gets about 500 of 5000 draws.
    buckets = [0] * 10
    for d in draws:
        buckets[int(d / 0.0334)] += 1
    assert min(buckets) > 350 and max(buckets) < 650, buckets


def test_each_source_is_seeded_independently() -> None:
    # Two daemons started at the same moment must not retry in lockstep.
    a, b = SystemRandomSource(), SystemRandomSource()
    assert [a.jitter(1.0) for _ in range(8)] != [b.jitter(1.0) for _ in range(8)]


def test_secret_values_have_their_sizes() -> None:
    rng = SystemRandomSource()
    assert len(rng.token_bytes(32)) == 32
    assert len({rng.token_bytes(32) for _ in range(100)}) == 100
    assert all(0 <= rng.index() < 2**32 for _ in range(1000))
