"""TAI64N: layout, the reference's 2**24 ns rounding, bytewise ordering and the vectors' timestamps."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import load_vector
from wgpy.protocol.tai64n import TAI64_BASE, TAI64N_LEN, tai64n, tai64n_to_unix

DET: Any = load_vector("handshake-deterministic.json")

walls = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


def test_layout() -> None:
    ts = tai64n(0.0)
    assert len(ts) == TAI64N_LEN
    assert ts == bytes.fromhex("400000000000000a00000000")
    assert TAI64_BASE == 0x400000000000000A


def test_vector_timestamp() -> None:
    t = DET["timestamp_unix"]
    # A float near 1.7e9 resolves only ~240 ns, so aim inside the 2**24 ns granule rather than at its edge.
    wall = t["seconds"] + (t["nanoseconds"] + 1000) / 1e9
    for case in DET["cases"]:
        assert tai64n(wall).hex() == case["timestamp_tai64n"]
    # The 16.8 ms whitening granule: anything within it gives the same label.
    assert tai64n(wall + 0.016).hex() == DET["cases"][0]["timestamp_tai64n"]
    assert tai64n(wall + 0.0168).hex() != DET["cases"][0]["timestamp_tai64n"]
    assert tai64n(wall - 2e-6) < tai64n(wall)


def test_rounding_down_to_2_pow_24_ns() -> None:
    ts = tai64n(1700000000.999999)
    nanos = int.from_bytes(ts[8:], "big")
    assert nanos % (1 << 24) == 0
    assert nanos == (999_999_000 >> 24) << 24  # rounded down, never up into the next second
    assert int.from_bytes(ts[:8], "big") == TAI64_BASE + 1700000000


@given(walls)
def test_nanoseconds_whitened_and_below_one_second(wall: float) -> None:
    nanos = int.from_bytes(tai64n(wall)[8:], "big")
    assert nanos % (1 << 24) == 0
    assert nanos < 1_000_000_000
    back = tai64n_to_unix(tai64n(wall))
    assert back <= wall + 1e-6
    assert wall - back < (1 << 24) / 1e9 + 1e-6


@given(walls, walls)
def test_monotonic_and_bytewise_order(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert tai64n(lo) <= tai64n(hi)
    # Bytewise order is numeric order of the decoded time.
    assert (tai64n(lo) < tai64n(hi)) == (tai64n_to_unix(tai64n(lo)) < tai64n_to_unix(tai64n(hi)))


def test_later_by_a_granule_is_strictly_greater() -> None:
    base = 1795618188.0
    stamps = [tai64n(base + i * 0.017) for i in range(200)]
    assert all(x < y for x, y in itertools.pairwise(stamps))


def test_to_unix_of_wireguard_go_stamp() -> None:
    # The live vector's timestamp is unrounded (real time) and decodes to its recorded nanoseconds.
    live: Any = load_vector("handshake-wireguard-go.json")
    value = tai64n_to_unix(bytes.fromhex(live["timestamp_tai64n"]))
    assert value == pytest.approx(live["timestamp_unix_ns"] / 1e9, abs=1e-6)


def test_to_unix_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        tai64n_to_unix(bytes(11))
