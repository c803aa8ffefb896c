"""Micro-benchmarks of the protocol core's hot paths, through the public Device API.

    python3 bench/bench_core.py

Reports handshakes per second for a responder (initiation in, response out, on one core), and µs per packet for
the batched send (route + pad + encrypt) and receive (decrypt + replay window + source check) paths, for 1420-byte
packets in batches of 1 and 64. Then the whole software data path of one TCP stream without system calls, in µs per
1368-byte segment: TSO split of a 64 KB super-packet (wgpy/linux/offload.py), Device.send, slicing a GRO batch,
Device.receive, and TCP coalescing for one TUN write. Times are CPU time of this thread (time.thread_time), best of
several rounds, so that other processes on a shared machine disturb them less. Nothing here is asserted: speed is
measured, not tested.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgpy.protocol.crypto import generate_private_key, public_key
from wgpy.protocol.device import Device
from wgpy.protocol.rng import SystemRandomSource

RNG = SystemRandomSource()
A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)


def _packet(size: int, seq: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address("10.0.0.1").packed, ipaddress.IPv4Address("10.0.0.2").packed)
    body = struct.pack("!HHHH", 1000, 2000, size - 20, 0) + seq.to_bytes(8, "big")
    return header + body + bytes(size - len(header) - len(body))


def bench_handshakes(count: int) -> float:
    """Initiations from `count` distinct initiator peers (so the per-peer flood rule never refuses one) consumed
    by one responder, which builds and sends a response to each."""
    responder = Device()
    responder_key = generate_private_key(RNG)
    responder.set_private_key(responder_key, 0.0)
    initiations: list[tuple[bytes, tuple[str, int]]] = []
    for i in range(count):
        initiator = Device()
        initiator.set_private_key(generate_private_key(RNG), 0.0)
        peer = initiator.add_peer(public_key(responder_key), 0.0)
        peer.endpoint = B_ADDR
        assert initiator.public_key is not None
        responder.add_peer(initiator.public_key, 0.0)
        initiator.set_endpoint(peer, B_ADDR, 0.0, time.time())
        [(_, [message])] = initiator.take_datagrams()
        initiations.append((message, ("198.18.1.1", 1024 + i)))
    start = time.perf_counter()
    # One at a time, as they would arrive, at a simulated 5 ms apart (not under load: no cookie replies).
    for i, item in enumerate(initiations):
        responder.receive([item], 10.0 + i * 0.005, time.time())
    elapsed = time.perf_counter() - start
    responses = sum(len(d) for _, d in responder.take_datagrams())
    assert responses == count, (responses, responder.stats)
    return count / elapsed


def _session(size: int) -> tuple[Device, Device]:
    a, b = Device(), Device()
    ka, kb = generate_private_key(RNG), generate_private_key(RNG)
    a.set_private_key(ka, 0.0)
    b.set_private_key(kb, 0.0)
    pa = a.add_peer(public_key(kb), 0.0)
    pb = b.add_peer(public_key(ka), 0.0)
    a.add_allowed_ip(pa, ipaddress.ip_network("10.0.0.2/32"))
    b.add_allowed_ip(pb, ipaddress.ip_network("10.0.0.1/32"))
    pa.endpoint = B_ADDR
    wall = time.time()
    a.send([_packet(size, 0)], 0.0, wall)
    for _ in range(3):
        for src, dst, addr in ((a, b, A_ADDR), (b, a, B_ADDR)):
            dst.receive([(d, addr) for _, ds in src.take_datagrams() for d in ds], 0.0, wall)
    b.take_packets()
    return a, b


def bench_transport(size: int, batch: int, total: int) -> tuple[float, float]:
    a, _ = _session(size)
    packets = [_packet(size, i) for i in range(batch)]
    rounds = max(1, total // batch)
    wall = time.time()
    encrypted: list[bytes] = []
    start = time.perf_counter()
    for r in range(rounds):
        a.send(packets, 1.0 + r * 1e-6, wall)
        out = a.take_datagrams()
        if r == 0:
            encrypted = out[0][1]
    send_us = (time.perf_counter() - start) / (rounds * batch) * 1e6
    # Receive: fresh datagrams each round (the replay window would refuse repeats), prepared before timing.
    a2, b2 = _session(size)
    prepared = []
    for _ in range(rounds):
        a2.send(packets, 1.0, wall)
        prepared.append([(d, A_ADDR) for _, ds in a2.take_datagrams() for d in ds])
    del encrypted
    start = time.perf_counter()
    for r, datagrams in enumerate(prepared):
        b2.receive(datagrams, 1.0 + r * 1e-6, wall)
        b2.take_packets()
    recv_us = (time.perf_counter() - start) / (rounds * batch) * 1e6
    return send_us, recv_us


def bench_pipeline(rounds: int = 200, repeats: int = 5) -> dict[str, float]:
    """µs per segment of each stage of the data path, for 48-segment TCP super-packets (the best of `repeats`)."""
    from bench_offload import tcp_super_packet  # type: ignore[import-not-found]

    from wgpy.linux.offload import coalesce_iov, split_super_packet

    vnet, super_packet = tcp_super_packet(48)
    wall = time.time()
    best: dict[str, float] = {}
    for _ in range(repeats):
        a, b = _session(1420)
        spent = dict.fromkeys(("split", "send", "gro slices", "receive", "coalesce"), 0.0)
        segments = 0
        clock = time.thread_time
        for _ in range(rounds):
            t0 = clock()
            packets = split_super_packet(vnet, super_packet, views=True)
            t1 = clock()
            a.send(packets, 1.0, wall)
            out = a.take_datagrams()
            t2 = clock()
            datagrams: list[tuple[bytes, tuple[str, int]]] = []
            for _, batch in out:  # what UdpSocket.recv_batch hands over after one GRO read per 64 KB
                blob = memoryview(b"".join(batch))
                size = len(batch[0])
                datagrams.extend((blob[i : i + size], A_ADDR) for i in range(0, len(blob), size))  # type: ignore[misc]
            t3 = clock()
            b.receive(datagrams, 1.0, wall)
            inner = b.take_packets()
            t4 = clock()
            writes = coalesce_iov(inner, data_valid=True)
            t5 = clock()
            assert len(writes) == 1 and writes[0][1] == len(packets), "the segments did not coalesce"
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                spent[key] += dt
            segments += len(packets)
        for key, total in spent.items():
            us = total / segments * 1e6
            best[key] = min(best.get(key, us), us)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handshakes", type=int, default=3000)
    parser.add_argument("--packets", type=int, default=64 * 400)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
          f"Python {platform.python_version()}, {platform.platform()}")
    rate = bench_handshakes(args.handshakes)
    print(f"responder handshakes/s (one core, through Device.receive): {rate:,.0f}")
    print(f"{'size':>6} {'batch':>6} {'send µs/pkt':>12} {'recv µs/pkt':>12}")
    for size in (1420, 64):
        for batch in (1, 64):
            send_us, recv_us = bench_transport(size, batch, args.packets)
            print(f"{size:>6} {batch:>6} {send_us:>12.2f} {recv_us:>12.2f}")
    stages = bench_pipeline()
    print("one TCP stream through the software data path, µs per 1368-byte segment (CPU time):")
    print("  " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items()) + f"  | total {sum(stages.values()):.2f}")


if __name__ == "__main__":
    main()
