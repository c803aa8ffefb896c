"""µs per packet of the offload hot paths: checksums (pure variants vs numpy), TSO split, TCP coalescing.

Run: python3 bench/bench_offload.py [--quick]. Prints the best of several timeit repeats; the figures behind
the choices in wgpy/linux/checksum.py and offload.py come from here. No assertion: speed lives in bench/, not
tests.
"""

from __future__ import annotations

import argparse
import os
import struct
import timeit
from collections.abc import Callable

from wgpy.linux import checksum, offload
from wgpy.linux.offload import VNET_HDR, coalesce, split_super_packet


def best_us(fn: Callable[[], object], number: int, repeat: int, per: int = 1) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number / per * 1e6


def sum_mod(b: bytes) -> int:
    """The plainest big-int form: one long division by 0xffff."""
    x = int.from_bytes(b, "big")
    if len(b) & 1:
        x <<= 8
    return x % 0xFFFF


def sum_shift_folds(b: bytes) -> int:
    """Halving shift-folds all the way down instead of a division."""
    x = int.from_bytes(b, "big")
    if len(b) & 1:
        x <<= 8
    bits = x.bit_length()
    while bits > 64:
        h = ((bits + 31) >> 5) << 4
        x = (x >> h) + (x & ((1 << h) - 1))
        bits = x.bit_length()
    while x > 0xFFFF:
        x = (x >> 16) + (x & 0xFFFF)
    return x


def sum_naive(b: bytes) -> int:
    if len(b) & 1:
        b += b"\0"
    s = 0
    for i in range(0, len(b), 2):
        s += (b[i] << 8) | b[i + 1]
    while s > 0xFFFF:
        s = (s >> 16) + (s & 0xFFFF)
    return s


def tcp_super_packet(segments: int, gso_size: int = 1368, v6: bool = False) -> tuple[bytes, bytes]:
    """A TCP super-packet with timestamps as the kernel hands it over at MTU 1420."""
    options = b"\x01\x01\x08\x0a" + bytes(8)
    thl = 20 + len(options)
    payload = os.urandom(min(segments * gso_size, 65535 - thl - (40 if v6 else 20)))  # the last may be short
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 1, (thl // 4) << 4, 0x18, 512, 0, 0) + options
    if v6:
        ip = struct.pack(">IHBB16s16s", 0x60000000, thl + len(payload), 6, 64, bytes(15) + b"\1",
                         bytes(15) + b"\2")
        gso = offload.VIRTIO_NET_HDR_GSO_TCPV6
    else:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), 1, 0x4000, 64, 6, 0,
                         b"\x0a\0\0\1", b"\x0a\0\0\2")
        gso = offload.VIRTIO_NET_HDR_GSO_TCPV4
    return VNET_HDR.pack(1, gso, len(ip) + thl, gso_size, len(ip), 16), ip + tcp + payload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, r = (2000, 3) if args.quick else (20000, 7)
    pkt = os.urandom(1400)
    print(f"numpy available: {checksum.HAVE_NUMPY}")
    print("internet checksum of 1400 bytes (µs)")
    print(f"  int.from_bytes % 0xffff        {best_us(lambda: sum_mod(pkt), n, r):7.2f}")
    print(f"  shift-folds only                {best_us(lambda: sum_shift_folds(pkt), n, r):7.2f}")
    print(f"  one fold + %  (checksum.py)     {best_us(lambda: checksum.ones_sum(pkt), n, r):7.2f}")
    print(f"  naive word loop                 {best_us(lambda: sum_naive(pkt), n // 50, r):7.2f}")
    if checksum.HAVE_NUMPY:
        import numpy as np

        def np_one(b: bytes = pkt) -> int:
            return int(np.frombuffer(b, dtype=">u2").sum(dtype=np.uint64)) % 0xFFFF

        print(f"  numpy, one packet               {best_us(np_one, n, r):7.2f}")
    payload = os.urandom(48 * 1368)
    print("per-segment sums over a 48 × 1368-byte super-packet payload (µs per segment)")
    for mode in (False, True):
        if mode and not checksum.HAVE_NUMPY:
            continue
        checksum.use_numpy = mode
        us = best_us(lambda: checksum.segment_sums(payload, 1368), n // 20, r, 48)
        print(f"  {'numpy' if mode else 'pure '}                           {us:7.2f}")
    print("TSO split of a 64 KB (48-segment) TCP super-packet, checksums included (µs per segment)")
    for v6 in (False, True):
        hdr, sup = tcp_super_packet(48, v6=v6)
        for mode in (False, True):
            if mode and not checksum.HAVE_NUMPY:
                continue
            checksum.use_numpy = mode
            us = best_us(lambda h=hdr, s=sup: split_super_packet(h, s), n // 20, r, 48)
            print(f"  IPv{6 if v6 else 4} {'numpy' if mode else 'pure '}                      {us:7.2f}")
    checksum.use_numpy = checksum.HAVE_NUMPY
    print("TCP coalescing, GRO in Python (µs per segment)")
    for v6 in (False, True):
        hdr, sup = tcp_super_packet(44, v6=v6)
        segs = split_super_packet(hdr, sup)
        us = best_us(lambda s=segs: coalesce(s), n // 20, r, len(segs))
        print(f"  IPv{6 if v6 else 4} 44 segments -> 1 write          {us:7.2f}")
    mixed = [bytes(60)] * 64
    print(f"  64 non-TCP packets (pass-through) {best_us(lambda: coalesce(mixed), n // 20, r, 64):7.2f}")


if __name__ == "__main__":
    main()
