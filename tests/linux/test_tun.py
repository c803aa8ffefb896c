"""The TUN device against the real kernel, inside namespaces the tests create (never in the root namespace)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.linux.test_offload import assert_valid, slow_csum
from tests.netns import Lab, Namespace, lab
from wgpy.linux import in_netns
from wgpy.linux.tun import (
    IFF_NO_PI,
    IFF_TUN,
    IFF_VNET_HDR,
    TUNSETIFF,
    Tun,
    TunGoneError,
)

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    """tests.netns.lab() as a fixture defined here, so no import of a fixture shadows the argument."""
    with lab() as the_lab:
        yield the_lab


def make_tun(ns: Namespace, name: str, offload: bool, mtu: int = 1420) -> Tun:
    with in_netns(ns.name):
        return Tun.create(name, mtu=mtu, offload=offload)


def link_details(ns: Namespace, name: str) -> str:
    return ns.run(["ip", "-d", "link", "show", name]).stdout


def up(ns: Namespace, name: str, *addrs: str) -> None:
    for a in addrs:
        ns.run(["ip", "addr", "add", a, "dev", name, *(["nodad"] if ":" in a else [])])
    ns.run(["ip", "link", "set", name, "up"])


def test_create_with_offload_mtu_and_deletion(netlab: Lab) -> None:
    ns = netlab.namespace()
    name = netlab.interface()
    tun = make_tun(ns, name, offload=True)
    try:
        assert tun.name == name
        assert tun.offload and tun.vnet_hdr
        details = link_details(ns, name)
        assert "vnet_hdr on" in details and "pi off" in details
        # Like wireguard-go: the MTU is set, the link is left down for wg-quick / ip to bring up.
        assert "mtu 1420" in details and "state DOWN" in details
        assert tun.mtu == 1420
        ns.run(["ip", "link", "set", name, "mtu", "1300"])
        assert tun.mtu == 1300
        tun.mtu = 1380
        assert "mtu 1380" in link_details(ns, name)
        assert tun.read_packets() == []  # non-blocking, nothing queued
        assert tun.exists()
        ns.run(["ip", "link", "del", name])
        assert not tun.exists()
        with pytest.raises(TunGoneError):
            tun.read_packets()
    finally:
        tun.close()
    assert not tun.exists()


def test_plain_path_has_no_vnet_header(netlab: Lab) -> None:
    ns = netlab.namespace()
    name = netlab.interface()
    with make_tun(ns, name, offload=False, mtu=1280) as tun:
        assert not tun.offload and not tun.vnet_hdr and not tun.uso
        details = link_details(ns, name)
        assert "vnet_hdr off" in details and "mtu 1280" in details


@pytest.mark.parametrize("vnet,offload", [(True, True), (True, False), (False, True)])
def test_adopt_an_open_fd(netlab: Lab, vnet: bool, offload: bool) -> None:
    ns = netlab.namespace()
    name = netlab.interface()
    with in_netns(ns.name):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        tun = Tun.adopt(fd, offload=offload)
    with tun:
        assert tun.name == name and tun.fd == fd
        assert tun.vnet_hdr == vnet
        assert tun.offload == (vnet and offload)
        assert not os.get_blocking(fd)
        assert tun.mtu == 1500  # adopt leaves the MTU alone
        up(ns, name, "10.3.0.1/24")
        # Whatever the header mode, the read path hands out plain packets: a ping to a peer address via the
        # TUN.
        ns.run(["ping", "-c", "1", "-W", "0.3", "10.3.0.2"], check=False)
        packets = tun.read_packets()
        echo = [p for p in packets if p[0] >> 4 == 4 and p[9] == 1]
        assert echo, packets
        assert_valid_icmp(bytes(echo[0]))


def assert_valid_icmp(pkt: bytes) -> None:
    assert slow_csum(pkt[:20]) == 0
    assert slow_csum(pkt[20:]) == 0


def test_udp_gso_super_packet_is_split_on_read(netlab: Lab) -> None:
    """With USO accepted the kernel hands a UDP_SEGMENT send to the TUN as one UDP_L4 super-packet."""
    ns = netlab.namespace()
    name = netlab.interface()
    with make_tun(ns, name, offload=True) as tun:
        up(ns, name, "10.4.0.1/24", "fd00:4::1/64")
        payload = bytes(range(256)) * 30  # 7680 bytes in 1000-byte segments: 8 datagrams
        for dst, fam in (("10.4.0.2", socket.AF_INET), ("fd00:4::2", socket.AF_INET6)):
            with in_netns(ns.name), socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(17, 103, 1000)
                s.sendto(payload, (dst, 9999))
        time.sleep(0.1)
        packets = [bytes(p) for p in tun.read_packets()]
        udp = [p for p in packets if (p[0] >> 4 == 4 and p[9] == 17) or (p[0] >> 4 == 6 and p[6] == 17)]
        assert len(udp) == 16, [len(p) for p in packets]
        for p in udp:
            assert_valid(p)
        v4 = b"".join(p[28:] for p in udp if p[0] >> 4 == 4)
        v6 = b"".join(p[48:] for p in udp if p[0] >> 4 == 6)
        assert v4 == payload and v6 == payload
        if tun.uso:
            assert tun.stats.super_packets_read >= 2


def ipv4_udp(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    udp_len = 8 + len(payload)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    ph = s + d + struct.pack(">BBH", 0, 17, udp_len)
    udp = struct.pack(">HHHH", 40000, dport, udp_len, 0) + payload
    c = slow_csum(ph + udp) or 0xFFFF
    udp = udp[:6] + struct.pack(">H", c) + udp[8:]
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0, s, d))
    ip[10:12] = struct.pack(">H", slow_csum(bytes(ip)))
    return bytes(ip) + udp


@pytest.mark.parametrize("offload", [True, False])
def test_write_survives_bad_packets(netlab: Lab, offload: bool) -> None:
    ns = netlab.namespace()
    name = netlab.interface()
    with make_tun(ns, name, offload=offload) as tun:
        up(ns, name, "10.5.0.1/24")
        with in_netns(ns.name):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx:
            rx.bind(("10.5.0.1", 7777))
            rx.settimeout(2)
            good = [ipv4_udp("10.5.0.2", "10.5.0.1", 7777, b"msg%d" % i) for i in range(3)]
            batch = [good[0], b"\x00" * 30, good[1], b"\x20" * 40, good[2]]  # IP versions 0 and 2: EINVAL
            accepted = tun.write_packets(batch)
            assert accepted == 3
            assert tun.stats.write_errors == 2
            assert sorted(rx.recv(100) for _ in range(3)) == [b"msg0", b"msg1", b"msg2"]


RECEIVER = """
import hashlib, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001)); srv.listen(1)
print('ready', flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while True:
    b = conn.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

SENDER = """
import random, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[2]))
s = socket.create_connection((sys.argv[1], 5001), timeout=60)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


def relay(
    a: Tun, b: Tun, until: subprocess.Popen[bytes] | list[subprocess.Popen[bytes]], timeout: float,
    check: int = 300,
) -> int:
    """Copy packets both ways between two TUN devices (read_packets -> write_packets) until ``until`` exits.

    The first ``check`` TCP packets read are verified with the slow reference checksum.
    """
    ep = select.epoll()
    ep.register(a.fd, select.EPOLLIN)
    ep.register(b.fd, select.EPOLLIN)
    peer = {a.fd: (a, b), b.fd: (b, a)}
    deadline = time.monotonic() + timeout
    checked = 0
    try:
        waiting = until if isinstance(until, list) else [until]
        while any(p.poll() is None for p in waiting):
            assert time.monotonic() < deadline, "transfer through the relay timed out"
            for fd, _ev in ep.poll(0.05):
                src, dst = peer[fd]
                packets = src.read_packets()
                if checked < check:
                    for p in packets[: check - checked]:
                        assert_valid(bytes(p)) if is_tcp_or_udp(p) else None
                        checked += 1
                dst.write_packets(packets)
    finally:
        ep.close()
    return checked


def is_tcp_or_udp(p: bytes | memoryview) -> bool:
    v = p[0] >> 4
    return (v == 4 and p[9] in (6, 17)) or (v == 6 and p[6] in (6, 17))


@pytest.mark.parametrize("offload,family,size", [
    (True, 4, 20 << 20), (False, 4, 8 << 20), (True, 6, 8 << 20), (False, 6, 3 << 20),
])
def test_tcp_transfer_through_two_tuns_and_a_python_relay(
    netlab: Lab, offload: bool, family: int, size: int
) -> None:
    """A TCP stream between two namespaces whose only link is this process moving packets between two TUNs."""
    na, nb = netlab.namespace(), netlab.namespace()
    ia, ib = netlab.interface(), netlab.interface()
    ta, tb = make_tun(na, ia, offload), make_tun(nb, ib, offload)
    try:
        up(na, ia, "10.6.0.1/24", "fd00:6::1/64")
        up(nb, ib, "10.6.0.2/24", "fd00:6::2/64")
        dst = "10.6.0.2" if family == 4 else "fd00:6::2"
        receiver = nb.popen(["python3", "-c", RECEIVER, dst], stdout=subprocess.PIPE)
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == b"ready"
        sender = na.popen(["python3", "-c", SENDER, dst, str(size), "11"])
        relay(ta, tb, receiver, timeout=60)
        out = receiver.stdout.read().decode().split()
        sender.wait(timeout=10)
        want = hashlib.sha256(random.Random(11).randbytes(size)).hexdigest()
        assert out == [str(size), want]
        assert ta.stats.read_errors == tb.stats.read_errors == 0
        assert ta.stats.write_errors == tb.stats.write_errors == 0
        if offload:
            # The data went through as super-packets: TSO splits on the sender side, coalesced writes on the
            # other.
            assert ta.stats.super_packets_read > 0
            assert tb.stats.super_packets_written > 0
            assert tb.stats.packets_written > 5 * tb.stats.super_packets_written
        else:
            assert ta.stats.super_packets_read == tb.stats.super_packets_written == 0
    finally:
        ta.close()
        tb.close()


@pytest.mark.parametrize("gro", [True, False])
def test_udp_runs_are_written_as_one_uso_super_packet(netlab: Lab, gro: bool) -> None:
    """Coalesced UDP datagrams reach a socket whole, whether it takes GRO batches or needs them split."""
    ns = netlab.namespace()
    name = netlab.interface()
    with make_tun(ns, name, offload=True) as tun:
        assert tun.uso  # Linux >= 6.2 takes USO4|USO6
        up(ns, name, "10.8.0.1/24")
        with in_netns(ns.name):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx:
            if gro:
                rx.setsockopt(17, 104, 1)
            rx.bind(("10.8.0.1", 7778))
            rx.settimeout(2)
            datagrams = [bytes([i]) * 1000 for i in range(20)] + [b"tail"]
            packets = []
            for i, d in enumerate(datagrams):
                p = bytearray(ipv4_udp("10.8.0.2", "10.8.0.1", 7778, d))
                p[4:6] = struct.pack(">H", 100 + i)  # IDs that run on, as a connected sender's do
                p[10:12] = b"\0\0"
                p[10:12] = struct.pack(">H", slow_csum(bytes(p[:20])))
                packets.append(bytes(p))
            assert tun.write_packets(packets) == 21
            assert tun.stats.writes == 1 and tun.stats.super_packets_written == 1
            if gro:
                got = b""
                while len(got) < sum(map(len, datagrams)):
                    got += rx.recv(65536)
                assert got == b"".join(datagrams)
            else:
                assert [rx.recv(65536) for _ in datagrams] == datagrams


MULTI_RECEIVER = """
import hashlib, socket, sys, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5002)); srv.listen(8)
print('ready', flush=True)
results = []
def serve(conn):
    h, n = hashlib.sha256(), 0
    while True:
        b = conn.recv(1 << 20)
        if not b:
            break
        h.update(b); n += len(b)
    results.append((n, h.hexdigest()))
threads = []
for _ in range(int(sys.argv[2])):
    conn, _ = srv.accept()
    threads.append(threading.Thread(target=serve, args=(conn,)))
    threads[-1].start()
for t in threads:
    t.join()
for n, h in sorted(results):
    print(n, h, flush=True)
"""

MULTI_SENDER = """
import random, socket, sys, threading
def send(seed, size):
    data = random.Random(seed).randbytes(size)
    s = socket.create_connection((sys.argv[1], 5002), timeout=60)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
threads = [threading.Thread(target=send, args=(int(seed), int(sys.argv[2]) + int(seed)))
           for seed in sys.argv[3:]]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_parallel_flows_both_ways_through_the_relay(netlab: Lab) -> None:
    """Interleaved TCP flows in both directions: coalescing must keep every flow whole and in order."""
    na, nb = netlab.namespace(), netlab.namespace()
    ia, ib = netlab.interface(), netlab.interface()
    ta, tb = make_tun(na, ia, True), make_tun(nb, ib, True)
    size = 3 << 20
    try:
        up(na, ia, "10.9.0.1/24")
        up(nb, ib, "10.9.0.2/24")
        flows = {nb: ("10.9.0.2", na, [1, 2, 3]), na: ("10.9.0.1", nb, [4])}
        receivers = {}
        for rx_ns, (addr, _tx_ns, seeds) in flows.items():
            proc = rx_ns.popen(["python3", "-c", MULTI_RECEIVER, addr, str(len(seeds))], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            receivers[rx_ns] = proc
        for addr, tx_ns, seeds in flows.values():
            tx_ns.popen(["python3", "-c", MULTI_SENDER, addr, str(size), *map(str, seeds)])
        relay(ta, tb, list(receivers.values()), timeout=60)
        for rx_ns, (_addr, _tx_ns, seeds) in flows.items():
            stdout = receivers[rx_ns].stdout
            assert stdout is not None
            got = stdout.read().decode().split()
            want = sorted((size + seed, hashlib.sha256(random.Random(seed).randbytes(size + seed)).hexdigest())
                          for seed in seeds)
            assert got == [str(x) for pair in want for x in pair]
        assert ta.stats.write_errors == tb.stats.write_errors == 0
        assert ta.stats.super_packets_written > 0 and tb.stats.super_packets_written > 0
    finally:
        ta.close()
        tb.close()
