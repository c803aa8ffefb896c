"""The internet checksum (RFC 1071) for the TSO split: pure Python, plus a numpy path for whole super-packets.

Why by hand: no maintained library computes it from Python without per-word interpreter work, and the data
plane needs it for every segment it splits. The pure path leans on one identity: 2**16 ≡ 1 (mod 0xffff), so a
buffer read as one big-endian integer is congruent to the sum of its 16-bit words, and CPython's bignum code
does the work in C. bench/bench_offload.py measured (1400-byte packet): this ≈ 2.3 µs, the numpy sum of one
packet ≈ 2.5 µs (call overhead), but numpy summing all segments of a 64 KB super-packet in one call ≈ 0.2 µs
per segment (:func:`row_sums`). So numpy is used only where one call covers many packets — :func:`segment_sums`
and :func:`row_sums` here, the whole-array TSO split and ``finish_checksums`` in offload.py — and only if it
imports; everything else is pure Python.

Sums here are "mod 0xffff" values in [0, 0xfffe]: 0 stands for one's-complement -0 (0xffff). A checksum built
as ``~s & 0xffff`` from such a value is therefore never 0, which is what UDP needs, and verifies the same for
TCP/IP.
"""

from __future__ import annotations

from typing import Any

Buffer = bytes | bytearray | memoryview

_masks: dict[int, int] = {}

_np: Any
try:  # numpy is optional: the data plane must work without it
    import numpy

    _np = numpy
    HAVE_NUMPY = True
except ImportError:  # pragma: no cover - exercised by the forced-pure tests instead
    _np = None
    HAVE_NUMPY = False

# Tests and the bench flip this to compare paths; chosen at import.
use_numpy = HAVE_NUMPY


def ones_sum(data: Buffer) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words (odd length padded with a zero byte), mod
    0xffff.

    One halving fold before the ``%`` halves the size of the long division (measured ~15 % faster at 1400 B).
    """
    n = len(data)
    x = int.from_bytes(data, "big")
    if n & 1:
        x <<= 8
    if n > 64:
        h = ((n * 8 + 31) >> 5) << 4
        m = _masks.get(h)
        if m is None:
            m = _masks[h] = (1 << h) - 1
        x = (x >> h) + (x & m)
    return x % 0xFFFF


def fold(s: int) -> int:
    """Reduce any non-negative partial sum to the mod-0xffff form used here."""
    return s % 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """The finished internet checksum of ``data`` with ``initial`` (e.g. a pseudo-header sum) added in."""
    return ~((ones_sum(data) + initial) % 0xFFFF) & 0xFFFF


def pseudo_header_sum(src: Buffer, dst: Buffer, proto: int, length: int) -> int:
    """Sum of the IPv4 or IPv6 pseudo-header (addresses, protocol, upper-layer length), not inverted.

    The length is added as a plain integer: for IPv6 it is a 32-bit field, but it never exceeds 16 bits here,
    and for IPv4 it is the 16-bit field, so both are congruent to ``length`` mod 0xffff.
    """
    return (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length) % 0xFFFF


def _segment_sums_pure(payload: Buffer, size: int) -> list[int]:
    mv = memoryview(payload)
    return [ones_sum(mv[i : i + size]) for i in range(0, len(mv), size)]


def row_sums(rows: Any, native: bool = False) -> Any:
    """:func:`ones_sum` of every row of a 2-D uint8 array with even-length rows, as a uint64 array.

    Summed as native (little-endian) words, which is twice as fast as numpy's big-endian ">u2" (that one
    byte-swaps every element; measured 12.4 against 5.8 µs for 48 × 1368 bytes): 2**16 ≡ 1 (mod 0xffff) lets
    32-bit words stand for pairs of 16-bit words, and a byte swap is a multiplication by 256 (mod 0xffff).
    With ``native`` the raw native-word sums are returned (times 256, mod 0xffff, gives the sums).
    """
    np = _np
    width = rows.shape[1]
    words = rows.view("<u4") if not width & 3 else rows.view("<u2")
    sums = words.sum(axis=1, dtype=np.uint64)
    return sums if native else sums % 0xFFFF * 256 % 0xFFFF


def _segment_sums_numpy(payload: Buffer, size: int) -> list[int]:
    np = _np
    n = len(payload)
    full = n // size
    out: list[int]
    if full:
        rows = np.frombuffer(payload, dtype=np.uint8, count=full * size).reshape(full, size)
        out = row_sums(rows).tolist()
    else:
        out = []
    if n > full * size:
        out.append(ones_sum(memoryview(payload)[full * size :]))
    return out


def segment_sums(payload: Buffer, size: int) -> list[int]:
    """Sums of ``payload`` cut into ``size``-byte segments (the last may be shorter), each as
    :func:`ones_sum`.

    The numpy path needs an even ``size`` (each segment starts on a word boundary of the array); odd sizes,
    tiny payloads and numpy-less installs take the pure path.
    """
    if use_numpy and not size & 1 and len(payload) >= 2 * size:
        return _segment_sums_numpy(payload, size)
    return _segment_sums_pure(payload, size)

