"""Tests for the anti-replay window: the Linux selftest sequence from the shared vectors, the properties the
receive path relies on (read-only early check, marking only after authentication), and a model-based property
test."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_vector
from wgpy.protocol.constants import COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES
from wgpy.protocol.replay import ReplayWindow

VECTOR = load_vector("replay-window.json")
LIMITS = {
    "paper/wireguard-go": int(VECTOR["constants"]["REJECT_AFTER_MESSAGES"]),
    "linux messages.h": int(VECTOR["constants"]["REJECT_AFTER_MESSAGES_linux_messages_h"]),
}


def _counter(step: dict[str, Any], limit: int) -> int:
    """The step's counter, re-based on `limit` when it derives from REJECT_AFTER_MESSAGES (see the vector
    file)."""
    offset = step.get("reject_after_messages_offset")
    return int(step["counter"]) if offset is None else limit + int(offset)


def _run(steps: list[dict[str, Any]], limit: int) -> int:
    """Run vector steps against one window, checking that may_accept agrees before every check_and_mark.
    Returns the number of checks run."""
    window = ReplayWindow(reject_after_messages=limit)
    checks = 0
    for i, step in enumerate(steps):
        if step["op"] == "reset":
            window.reset()
            continue
        assert step["op"] == "check"
        counter = _counter(step, limit)
        expected = bool(step["accept"])
        assert window.may_accept(counter) is expected, (i, step)
        assert window.check_and_mark(counter) is expected, (i, step)
        checks += 1
    return checks


def test_constants_match_vector() -> None:
    assert VECTOR["constants"]["COUNTER_WINDOW_SIZE"] == COUNTER_WINDOW_SIZE
    assert VECTOR["constants"]["REJECT_AFTER_MESSAGES"] == REJECT_AFTER_MESSAGES


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS.keys())
def test_linux_selftest_steps(limit: int) -> None:
    assert _run(VECTOR["steps"], limit) == VECTOR["check_count"]


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS.keys())
@pytest.mark.parametrize("index", range(len(VECTOR["extra_sequences"])))
def test_wireguard_go_extra_sequences(limit: int, index: int) -> None:
    sequence = VECTOR["extra_sequences"][index]
    assert sequence["steps"][0]["op"] == "reset"
    assert _run(sequence["steps"], limit) > 0


def test_default_limit_is_the_papers() -> None:
    window = ReplayWindow()
    assert not window.may_accept(REJECT_AFTER_MESSAGES)
    assert not window.check_and_mark(REJECT_AFTER_MESSAGES)
    assert window.check_and_mark(REJECT_AFTER_MESSAGES - 1)
    assert window.highest == REJECT_AFTER_MESSAGES - 1
    assert not window.check_and_mark(2**64 - 1)


def test_may_accept_never_mutates() -> None:
    window = ReplayWindow()
    for counter in (0, 5, 3, 10_000):
        assert window.may_accept(counter)
        assert window.may_accept(counter)  # asking twice does not mark
    assert window.highest is None
    assert window.check_and_mark(3)
    assert not window.may_accept(3)
    assert window.may_accept(2)


def test_forged_far_future_counter_leaves_window_unharmed() -> None:
    """A forged packet passes the cheap check, fails authentication, so check_and_mark is never called: the
    legitimate in-window traffic must be unaffected (had it been marked, everything below would be too
    old)."""
    window = ReplayWindow()
    for counter in range(100):
        assert window.check_and_mark(counter)
    forged = 2**63 + 12345
    assert window.may_accept(forged)
    # ... authentication fails here, so no check_and_mark(forged) ...
    assert window.highest == 99
    assert window.may_accept(100)
    assert window.check_and_mark(100)
    assert window.check_and_mark(50 + COUNTER_WINDOW_SIZE) is True
    assert window.check_and_mark(101)  # still inside the window
    # The forged counter itself is still acceptable later if a real packet carries it: nothing was marked.
    assert window.may_accept(forged)


def test_replay_from_beyond_the_window_is_rejected() -> None:
    window = ReplayWindow()
    assert window.check_and_mark(0)
    assert window.check_and_mark(1)
    top = 1 + COUNTER_WINDOW_SIZE + 1
    assert window.check_and_mark(top)
    # 1 is now exactly one beyond the window; never-seen 2 is exactly at its edge.
    assert not window.may_accept(1)
    assert not window.check_and_mark(1)
    assert not window.check_and_mark(0)
    assert window.check_and_mark(top - COUNTER_WINDOW_SIZE)
    assert not window.check_and_mark(top - COUNTER_WINDOW_SIZE)
    # A never-seen counter from before the window is rejected too: it cannot be told from a replay.
    assert not window.check_and_mark(top - COUNTER_WINDOW_SIZE - 1)


def test_big_jump_clears_the_whole_ring() -> None:
    window = ReplayWindow()
    for counter in range(0, 9000, 3):
        assert window.check_and_mark(counter)
    jump = 2**60 + 7
    assert window.check_and_mark(jump)
    for counter in range(jump - COUNTER_WINDOW_SIZE, jump):
        assert window.may_accept(counter)
    assert not window.may_accept(jump - COUNTER_WINDOW_SIZE - 1)
    assert not window.may_accept(jump)


def test_stale_bits_are_cleared_when_the_ring_wraps() -> None:
    """Counters 8192 apart share a bit of the ring; a gap left in one lap must be acceptable in the next."""
    window = ReplayWindow()
    gaps = {8200, 8263, 8264, 12_000, 16_383, 16_384}
    for counter in range(20_000):
        if counter not in gaps:
            assert window.check_and_mark(counter), counter
    for counter in sorted(gaps):
        expected = 19_999 - counter <= COUNTER_WINDOW_SIZE
        assert window.may_accept(counter) is expected, counter
        assert window.check_and_mark(counter) is expected, counter


@pytest.mark.parametrize("jump", [64, 65, 128, 1000, 4096, 8000, 8128, 8191, 8192, 8193, 9000])
def test_stale_bits_are_cleared_on_a_jump(jump: int) -> None:
    """A jump of several blocks must zero every block it passes over, not just the last one."""
    window = ReplayWindow()
    for counter in range(10_000):
        assert window.check_and_mark(counter)
    top = 9_999 + jump
    assert window.check_and_mark(top)
    for counter in range(top - COUNTER_WINDOW_SIZE, top):
        assert window.may_accept(counter) is (counter >= 10_000), counter
    assert not window.may_accept(top - COUNTER_WINDOW_SIZE - 1)


def test_naive_model_agrees_with_vector() -> None:
    """The model used below is itself checked against the selftest, so the property test compares against a
    trusted reference."""
    model = NaiveWindow()
    for step in VECTOR["steps"]:
        if step["op"] == "reset":
            model = NaiveWindow()
        else:
            assert model.mark(int(step["counter"])) is bool(step["accept"])


def test_reset() -> None:
    window = ReplayWindow()
    assert window.check_and_mark(7)
    window.reset()
    assert window.highest is None
    assert window.check_and_mark(7)
    assert window.check_and_mark(0)


def test_negative_counter_rejected() -> None:
    window = ReplayWindow()
    assert not window.may_accept(-1)
    assert not window.check_and_mark(-1)


class NaiveWindow:
    """The rule as written in the vector file, with a set: slow but obviously right."""

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self.limit = limit
        self.seen: set[int] = set()
        self.max: int | None = None

    def ok(self, n: int) -> bool:
        if not 0 <= n < self.limit or n in self.seen:
            return False
        return self.max is None or n > self.max or self.max - n <= COUNTER_WINDOW_SIZE

    def mark(self, n: int) -> bool:
        if not self.ok(n):
            return False
        self.seen.add(n)
        self.max = n if self.max is None else max(self.max, n)
        return True


# Moves relative to the current highest counter, so sequences stay near the window's edges, plus absolute far
# jumps (some beyond 2**53 and up to and past the limit).
_step = st.one_of(
    st.tuples(st.just("rel"), st.integers(-COUNTER_WINDOW_SIZE - 70, 70)),
    st.tuples(st.just("rel"), st.integers(-20_000, 20_000)),
    st.tuples(st.just("abs"), st.integers(0, 2**64 + 10)),
    st.tuples(st.just("abs"), st.integers(REJECT_AFTER_MESSAGES - 9000, REJECT_AFTER_MESSAGES + 2)),
)
_op = st.one_of(
    st.tuples(st.sampled_from(["may", "mark", "mark", "mark"]), _step),
    # A run of counters from just above the highest, with a stride, so the ring fills and laps (stale bits).
    st.tuples(st.just("run"), st.tuples(st.integers(1, 9000), st.integers(1, 3))),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=60), limit=st.sampled_from(list(LIMITS.values())))
def test_against_naive_model(ops: list[tuple[str, tuple[Any, int]]], limit: int) -> None:
    window = ReplayWindow(reject_after_messages=limit)
    model = NaiveWindow(limit)
    for kind, (mode, value) in ops:
        base = model.max if model.max is not None else 0
        if kind == "run":
            for counter in range(base + 1, base + 1 + int(mode), value):
                assert window.check_and_mark(counter) is model.mark(counter)
            continue
        counter = base + value if mode == "rel" else value
        if counter < 0:
            counter = -counter
        if kind == "may":
            assert window.may_accept(counter) is model.ok(counter)
        else:
            assert window.check_and_mark(counter) is model.mark(counter)
        assert window.highest == model.max


@settings(max_examples=400, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["range", "mark"]), st.integers(0, 9000), st.integers(0, 20_000)),
                 max_size=30),
    start=st.sampled_from([0, 2**40, REJECT_AFTER_MESSAGES - 50_000]),
)
def test_mark_range_is_check_and_mark_of_each(ops: list[tuple[str, int, int]], start: int) -> None:
    """A run marked at once leaves the window exactly as marking its counters one by one does."""
    window, reference = ReplayWindow(), ReplayWindow()
    for kind, gap, length in ops:
        first = start + gap if window.highest is None else window.next_new + gap
        last = first + length
        if last >= REJECT_AFTER_MESSAGES:
            continue
        if kind == "range":
            window.mark_range(first, last)
            for counter in range(first, last + 1):
                assert reference.check_and_mark(counter)
        else:  # an ordinary packet between runs, possibly below the top (inside the window)
            counter = max(0, first - 2 * gap)
            assert window.check_and_mark(counter) is reference.check_and_mark(counter)
        assert window._next == reference._next and window._blocks == reference._blocks
        for probe in range(max(0, window.next_new - 9000), window.next_new + 3, 97):
            assert window.may_accept(probe) is reference.may_accept(probe)


def test_mark_range_refuses_counters_below_the_top() -> None:
    window = ReplayWindow()
    window.check_and_mark(10)
    with pytest.raises(ValueError):
        window.mark_range(10, 12)
    with pytest.raises(ValueError):
        window.mark_range(12, 11)
    assert window.highest == 10
