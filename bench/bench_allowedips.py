"""Benchmark of cryptokey routing (wgpy.protocol.allowedips) at deployment scale.

Run: python3 bench/bench_allowedips.py [--seed N] [--lookups N]

Builds 10,000 peers x 10 prefixes = 100,000 prefixes (per peer: 3 IPv4 /32, 2 /24, 1 /16, 2 IPv6 /128,
1 /64, 1 /48, all distinct, random), then reports build time, lookups per second and microseconds per lookup
for random hits and misses in both families, lookup_dst on whole packets, memory (tracemalloc) per prefix and
per peer, and the lookup cost at 1k / 10k / 100k prefixes, which should stay flat: a lookup probes one dict
per distinct prefix length present (here 3 per family), whatever the number of prefixes.

Hits are addresses drawn inside randomly chosen inserted prefixes (so a /16 hit first misses at /32 and /24);
misses come from ranges no prefix covers (240.0.0.0/4, fc00::/7), where every length is probed. Times are per
call including the Python loop that makes the calls, best of several rounds. The machine may be shared, so
expect some noise; the growth from 1k to 100k prefixes is CPU-cache misses on bigger dicts, not more probes.
"""

from __future__ import annotations

import argparse
import gc
import random
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TypeVar

from wgpy.protocol.allowedips import AllowedIPs

Network = IPv4Network | IPv6Network
T = TypeVar("T")

# (family bits, prefix length, count per peer)
MIX: list[tuple[int, int, int]] = [
    (32, 32, 3),
    (32, 24, 2),
    (32, 16, 1),
    (128, 128, 2),
    (128, 64, 1),
    (128, 48, 1),
]
PREFIXES_PER_PEER = sum(count for _, _, count in MIX)


class BenchPeer:
    """Stands in for a Peer: the table stores references, so the peer's own size does not matter."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _random_v4(rng: random.Random) -> int:
    # 1.0.0.0 .. 223.255.255.255: never inside 240.0.0.0/4, where the misses come from.
    return rng.randrange(0x01000000, 0xE0000000)


def _random_v6(rng: random.Random) -> int:
    # Inside 2000::/3; misses come from fc00::/7.
    return (0x2 << 125) | rng.getrandbits(125)


def make_prefixes(peers: int, rng: random.Random) -> list[tuple[Network, BenchPeer]]:
    """`peers` x PREFIXES_PER_PEER distinct random prefixes, grouped by peer in insertion order."""
    seen: set[tuple[int, int, int]] = set()
    out: list[tuple[Network, BenchPeer]] = []
    for i in range(peers):
        peer = BenchPeer(i)
        for bits, length, count in MIX:
            for _ in range(count):
                while True:
                    value = _random_v4(rng) if bits == 32 else _random_v6(rng)
                    key = (bits, length, value >> (bits - length))
                    if key not in seen:
                        seen.add(key)
                        break
                cls = IPv4Network if bits == 32 else IPv6Network
                out.append((cls((value >> (bits - length) << (bits - length), length)), peer))
    return out


def hit_addresses(
    prefixes: Sequence[tuple[Network, BenchPeer]], version: int, n: int, rng: random.Random
) -> list[bytes]:
    candidates = [net for net, _ in prefixes if net.version == version]
    out = []
    for _ in range(n):
        net = rng.choice(candidates)
        host_bits = net.max_prefixlen - net.prefixlen
        value = int(net.network_address) | (rng.getrandbits(host_bits) if host_bits else 0)
        out.append(value.to_bytes(net.max_prefixlen // 8, "big"))
    return out


def miss_addresses(version: int, n: int, rng: random.Random) -> list[bytes]:
    if version == 4:
        return [(0xF0000000 | rng.getrandbits(28)).to_bytes(4, "big") for _ in range(n)]
    return [((0xFC << 120) | rng.getrandbits(121)).to_bytes(16, "big") for _ in range(n)]


def ipv4_packets(addresses: Sequence[bytes]) -> list[bytes]:
    head = struct.pack("!BBHHHBBH4s", 0x45, 0, 1420, 0, 0, 64, 17, 0, b"\x0a\x00\x00\x01")
    return [head + a + bytes(1400) for a in addresses]


def per_call(fn: Callable[[T], object], items: Sequence[T], rounds: int = 5) -> float:
    """Best-of-`rounds` seconds per call of fn over items."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items)


def build(prefixes: Sequence[tuple[Network, BenchPeer]]) -> tuple[AllowedIPs[BenchPeer], float]:
    table: AllowedIPs[BenchPeer] = AllowedIPs()
    start = time.perf_counter()
    for net, peer in prefixes:
        table.insert(net, peer)
    return table, time.perf_counter() - start


def lookup_rows(
    table: AllowedIPs[BenchPeer], prefixes: Sequence[tuple[Network, BenchPeer]], n: int, rng: random.Random
) -> list[tuple[str, float]]:
    v4_hits, v6_hits = hit_addresses(prefixes, 4, n, rng), hit_addresses(prefixes, 6, n, rng)
    v4_miss, v6_miss = miss_addresses(4, n, rng), miss_addresses(6, n, rng)
    # Check the workload is what it claims before timing it.
    assert all(table.lookup(a) is not None for a in v4_hits[:1000] + v6_hits[:1000])
    assert all(table.lookup(a) is None for a in v4_miss[:1000] + v6_miss[:1000])
    packets = ipv4_packets(v4_hits)
    lookup = table.lookup
    return [
        ("lookup IPv4 hit", per_call(lookup, v4_hits)),
        ("lookup IPv4 miss", per_call(lookup, v4_miss)),
        ("lookup IPv6 hit", per_call(lookup, v6_hits)),
        ("lookup IPv6 miss", per_call(lookup, v6_miss)),
        ("lookup_dst IPv4 packet (hit)", per_call(table.lookup_dst, packets)),
    ]


def peer_bookkeeping_bytes(table: AllowedIPs[BenchPeer]) -> int:
    """Deep size of the per-peer ordered entry lists (a private attribute, read here only to report it)."""
    by_peer = table._by_peer
    total = sys.getsizeof(by_peer)
    for peer_id, entries in by_peer.items():
        total += sys.getsizeof(peer_id) + sys.getsizeof(entries) + sum(sys.getsizeof(e) for e in entries)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lookups", type=int, default=100_000, help="addresses per timed category")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    version = sys.version.split()[0]
    print(f"Python {version}; seed {args.seed}; {args.lookups} addresses per category, best of 5")
    print()

    peers = 10_000
    prefixes = make_prefixes(peers, rng)
    gc.collect()
    table, build_seconds = build(prefixes)
    assert len(table) == len(prefixes)
    # Memory of a second, identical table built under tracemalloc (which slows allocation, so not timed).
    gc.collect()
    tracemalloc.start()
    traced_table, _ = build(prefixes)
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    bookkeeping = peer_bookkeeping_bytes(traced_table)
    del traced_table
    peer_objects = [peer for _, peer in prefixes[::PREFIXES_PER_PEER]]
    entries_seconds = per_call(table.entries_for, peer_objects)

    mix = ", ".join(f"{count}x /{length}{' v6' if bits == 128 else ''}" for bits, length, count in MIX)
    print(f"Table: {peers:,} peers x {PREFIXES_PER_PEER} prefixes = {len(prefixes):,} prefixes ({mix})")
    per_insert = build_seconds / len(prefixes) * 1e6
    print(f"  build (insert all)            {build_seconds:8.3f} s  ({per_insert:.2f} µs/insert)")
    print(f"  memory of the table           {traced / 2**20:8.1f} MiB (tracemalloc)")
    print(f"    per prefix                  {traced / len(prefixes):8.0f} B")
    print(f"    per peer (with its 10)      {traced / peers:8.0f} B")
    print(f"    of which per-peer lists     {bookkeeping / peers:8.0f} B per peer (the order entries_for keeps)")
    print(f"  entries_for(peer)             {entries_seconds * 1e6:8.2f} µs (builds 10 network objects)")
    print()

    print(f"{'operation':32} {'µs/call':>9} {'calls/s':>12}")
    for name, seconds in lookup_rows(table, prefixes, args.lookups, rng):
        print(f"{name:32} {seconds * 1e6:9.3f} {1 / seconds:12,.0f}")
    print()

    print("Scaling: µs per lookup against table size (same mix, 1/10 as many peers as prefixes)")
    header = ["prefixes", "v4 hit", "v4 miss", "v6 hit", "v6 miss", "build µs/insert"]
    print("  ".join(f"{h:>15}" for h in header))
    for size in (1_000, 10_000, 100_000):
        sub_rng = random.Random(args.seed + size)
        reuse = size == len(prefixes)
        sub_prefixes = prefixes if reuse else make_prefixes(size // PREFIXES_PER_PEER, sub_rng)
        sub_table, sub_build = build(sub_prefixes)
        rows = lookup_rows(sub_table, sub_prefixes, min(args.lookups, 50_000), sub_rng)
        cells = [f"{size:,}"] + [f"{s * 1e6:.3f}" for _, s in rows[:4]] + [f"{sub_build / size * 1e6:.2f}"]
        print("  ".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()
