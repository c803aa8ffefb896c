"""TAI64N timestamps, the replay protection of handshake initiations.

A responder accepts an initiation from a peer only if its timestamp is strictly greater than the greatest
one it accepted from that peer before (the Device keeps that, not this module). The 12 bytes are
big-endian, so plain ``bytes`` comparison (``new > last``) orders them correctly: compare the bytes, never
a decoded float.

Like the reference implementations, the nanoseconds are rounded down to a multiple of 2**24 ns (about 16.8
ms), so that an initiation does not reveal the sender's precise clock (a timing side channel). Two
initiations less than that apart therefore carry equal timestamps, and the second is refused; the
initiation-rate limit (HANDSHAKE_INITIATION_RATE) is of the same order anyway.
"""

from __future__ import annotations

import math
import struct
from typing import Final

__all__ = ["TAI64N_LEN", "TAI64_BASE", "tai64n", "tai64n_to_unix"]

TAI64N_LEN: Final = 12
TAI64_BASE: Final = (1 << 62) + 10
"""TAI64 label of the Unix epoch: 2**62 plus the 10 s TAI-UTC offset of 1970, as the reference
implementations use.
"""

_WHITENER_MASK: Final = (1 << 24) - 1
_TAI64N: Final = struct.Struct(">QI")


def tai64n(wall: float) -> bytes:
    """The TAI64N label of the Unix time ``wall`` (seconds), nanoseconds rounded down to a multiple of 2**24.
    """
    seconds = math.floor(wall)
    nanos = min(int((wall - seconds) * 1e9), 999_999_999)
    return _TAI64N.pack(TAI64_BASE + seconds, nanos & ~_WHITENER_MASK)


def tai64n_to_unix(ts: bytes) -> float:
    """Unix seconds of a 12-byte TAI64N label (for display; compare timestamps as bytes)."""
    if len(ts) != TAI64N_LEN:
        raise ValueError("a TAI64N label is 12 bytes")
    seconds, nanos = _TAI64N.unpack(ts)
    return (seconds - TAI64_BASE) + nanos / 1e9
