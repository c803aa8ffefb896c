"""µs per packet of the offload hot paths: checksums (pure variants vs numpy), TSO split, TCP coalescing.

Run: python3 bench/bench_offload.py [--quick]. Prints the best of several timeit repeats; the figures behind
the choices in wgpy/linux/checksum.py and offload.py come from here. No assertion: speed lives in bench/, not
tests.
"""

from __future__ import annotations

import argparse
import os
import struct
import time
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
    parser.add_argument("--udp", action="store_true", help="also UdpSocket on loopback")
    parser.add_argument("--relay", action="store_true", help="also iperf3 through two TUNs (root, namespaces)")
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
    if checksum.HAVE_NUMPY:
        print("TSO split, IPv4 48 segments, numpy path (µs per segment)")
        hdr, sup = tcp_super_packet(48)
        old_min = offload.NUMPY_SPLIT_MIN
        for label, minimum, views in (("per-segment loop, numpy sums ", 10**9, False),
                                      ("whole-array split, bytes     ", old_min, False),
                                      ("whole-array split, views     ", old_min, True)):
            offload.NUMPY_SPLIT_MIN = minimum
            us = best_us(lambda h=hdr, s=sup, v=views: split_super_packet(h, s, v), n // 20, r, 48)
            print(f"  {label}       {us:7.2f}")
        offload.NUMPY_SPLIT_MIN = old_min
        print("finishing CHECKSUM_PARTIAL single packets (a UDP flood), 64 × 1400 B (µs per packet)")
        udp_pkts = [bytearray(os.urandom(1400)) for _ in range(64)]
        for label, mode in (("one by one (ones_sum)        ", False), ("batched (numpy reduceat)     ", True)):
            checksum.use_numpy = mode
            us = best_us(lambda: offload.finish_checksums([(p, 20, 6) for p in udp_pkts]), n // 20, r, 64)
            print(f"  {label}       {us:7.2f}")
        checksum.use_numpy = checksum.HAVE_NUMPY
    print("TCP coalescing, GRO in Python (µs per segment)")
    for v6 in (False, True):
        hdr, sup = tcp_super_packet(44, v6=v6)
        segs = split_super_packet(hdr, sup)
        us = best_us(lambda s=segs: coalesce(s), n // 20, r, len(segs))
        print(f"  IPv{6 if v6 else 4} 44 segments -> 1 write          {us:7.2f}")
        us = best_us(lambda s=segs: offload.coalesce_iov(s), n // 20, r, len(segs))
        print(f"  IPv{6 if v6 else 4} same, as writev iovecs         {us:7.2f}")
    mixed = [bytes(60)] * 64
    print(f"  64 non-TCP packets (pass-through) {best_us(lambda: coalesce(mixed), n // 20, r, 64):7.2f}")
    if args.udp:
        bench_udp()
    if args.relay:
        bench_relay()




def bench_udp(count: int = 2000, size: int = 1452) -> None:
    """Loopback UdpSocket: µs per datagram for send_batch and recv_batch, GSO/GRO against the plain path."""
    import select

    from wgpy.linux.udp import UdpSocket

    print(f"UdpSocket on loopback, {count} × {size}-byte datagrams (µs per datagram)")
    data = [os.urandom(size) for _ in range(count)]
    for use_offload in (True, False):
        with UdpSocket(offload=use_offload) as tx, UdpSocket(offload=use_offload) as rx:
            fd = rx.fileno()[0]
            best_send = best_recv = float("inf")
            for _ in range(5):
                t0 = timeit.default_timer()
                for i in range(0, count, 64):
                    tx.send_batch(("127.0.0.1", rx.port), data[i : i + 64])
                t1 = timeit.default_timer()
                got = 0
                while got < count:
                    select.select([fd], [], [], 1.0)
                    batch = rx.recv_batch(fd)
                    if not batch:
                        break
                    got += len(batch)
                t2 = timeit.default_timer()
                best_send = min(best_send, (t1 - t0) / count * 1e6)
                best_recv = min(best_recv, (t2 - t1) / max(got, 1) * 1e6)
            label = "GSO send / GRO receive" if use_offload else "plain sendmsg / recvmsg"
            print(f"  {label:30s} send {best_send:5.2f}   receive {best_recv:5.2f}   (received {got}/{count})")


def bench_relay(seconds: int = 5) -> None:
    """iperf3 between two namespaces whose only link is this process relaying between two TUN devices."""
    import json
    import select
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.netns
    from tests.netns import lab
    from wgpy.linux import in_netns
    from wgpy.linux.tun import Tun

    print(f"TCP through two TUNs and a Python relay (iperf3, {seconds} s, one stream)")
    for use_offload in (True, False):
        with lab() as the_lab:
            na, nb = the_lab.namespace(), the_lab.namespace()
            tuns = []
            for ns, addr in ((na, "10.6.0.1/24"), (nb, "10.6.0.2/24")):
                name = the_lab.interface("wgb")
                with in_netns(ns.name):
                    tuns.append(Tun.create(name, 1420, offload=use_offload))
                ns.run(["ip", "addr", "add", addr, "dev", name])
                ns.run(["ip", "link", "set", name, "up"])
            a, b = tuns
            nb.popen(["iperf3", "-s", "-1", "-B", "10.6.0.2"], stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            client = na.popen(["iperf3", "-c", "10.6.0.2", "-t", str(seconds), "-J"], stdout=subprocess.PIPE)
            ep = select.epoll()
            ep.register(a.fd, select.EPOLLIN)
            ep.register(b.fd, select.EPOLLIN)
            peer = {a.fd: (a, b), b.fd: (b, a)}
            cpu0 = time.process_time()
            while client.poll() is None:
                for fd, _ in ep.poll(0.05):
                    src, dst = peer[fd]
                    dst.write_packets(src.read_packets())
            cpu = time.process_time() - cpu0
            assert client.stdout is not None
            result = json.loads(client.stdout.read())
            gbits = result["end"]["sum_received"]["bits_per_second"] / 1e9
            gbytes = result["end"]["sum_received"]["bytes"] / 1e9
            label = "offload" if use_offload else "plain  "
            print(f"  {label}  {gbits:5.2f} Gbit/s   relay CPU {cpu / gbytes:5.1f} s/GB   super-packets"
                  f" read/written {a.stats.super_packets_read}/{b.stats.super_packets_written}")
            for t in tuns:
                t.close()


if __name__ == "__main__":
    main()
