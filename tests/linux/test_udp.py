"""UdpSocket on loopback and in namespaces: GSO/GRO batches, sticky source, IPv6, rebind, fwmark, errors."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.netns import Lab, lab
from wgpy.linux import in_netns, udp
from wgpy.linux.udp import HANDSHAKE_SOCKET_BUFFER, SO_MARK, UdpSocket, canonical_host


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def drain(sock: UdpSocket, want: int, timeout: float = 3.0) -> list[tuple[bytes, tuple[str, int]]]:
    """recv_batch on every fd until ``want`` datagrams arrived (or the timeout: the caller's assert says
    what)."""
    got: list[tuple[bytes, tuple[str, int]]] = []
    ep = select.epoll()
    for fd in sock.fileno():
        ep.register(fd, select.EPOLLIN)
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            for fd, _ in ep.poll(0.1):
                got.extend((bytes(d), e) for d, e in sock.recv_batch(fd))
    finally:
        ep.close()
    return got


def payloads() -> list[bytes]:
    """Runs that exercise every GSO boundary: > 128 segments, > 65507 bytes, a short tail, size changes. Each
    starts with byte 4 (WireGuard transport data), which handshake steering keeps in the data socket, the one
    with GRO."""
    out = [bytes([i & 0xFF]) * 1400 + i.to_bytes(4, "big") for i in range(300)]
    out.append(b"short tail")
    out += [bytes([7]) * 700] * 5 + [b"x" * 1500] + [bytes([i]) * 64 for i in range(200)]
    return [b"\x04" + p for p in out]


@pytest.mark.parametrize("send_offload,recv_offload", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_batches_arrive_whole_and_in_order(host: str, send_offload: bool, recv_offload: bool) -> None:
    data = payloads()
    with UdpSocket(offload=send_offload) as tx, UdpSocket(offload=recv_offload) as rx:
        assert tx.gso == send_offload and rx.gro == recv_offload  # this kernel has both
        tx.send_batch((host, rx.port), data)
        got = drain(rx, len(data))
        assert [d for d, _ in got] == data
        assert {e for _, e in got} == {(host, tx.port)}
        assert tx.stats.datagrams_sent == len(data) and not tx.stats.send_errors
        if send_offload:
            assert 0 < tx.stats.gso_sends < len(data) // 10
        else:
            assert tx.stats.gso_sends == 0
        if send_offload and recv_offload:
            assert rx.stats.gro_batches > 0
        if not recv_offload:
            assert rx.stats.gro_batches == 0


@pytest.mark.parametrize("steer", [True, False])
def test_port_zero_binds_both_families_to_one_port(steer: bool) -> None:
    with UdpSocket(steer=steer) as s:
        fds = s.fileno()
        assert len(fds) == (4 if steer else 2) and s.port > 0
        assert len(s.handshake_fds) == (2 if steer else 0) and set(fds[2:]) == s.handshake_fds
        assert s.steering is steer
        # A plain bind fails on the port, as against wireguard-go: a reuseport group does not let strangers in.
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with v4, v6:
            for probe, addr in ((v4, "0.0.0.0"), (v6, "::")):
                with pytest.raises(OSError) as err:
                    probe.bind((addr, s.port))
                assert err.value.errno == errno.EADDRINUSE


def test_rebind_moves_both_sockets() -> None:
    with UdpSocket() as rx, UdpSocket() as tx:
        old = rx.port
        rx.rebind(0)
        assert rx.port != old
        # The old port is free again, and traffic reaches the new one on both families.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", old))
        tx.send_batch(("127.0.0.1", rx.port), [b"four"])
        tx.send_batch(("::1", rx.port), [b"six"])
        assert sorted(d for d, _ in drain(rx, 2)) == [b"four", b"six"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
            blocker.bind(("0.0.0.0", 0))
            taken = blocker.getsockname()[1]
            with pytest.raises(OSError):
                rx.rebind(taken)
        tx.send_batch(("127.0.0.1", rx.port), [b"still here"])  # a failed rebind keeps the old pair
        assert [d for d, _ in drain(rx, 1)] == [b"still here"]


def test_fwmark_on_both_sockets() -> None:
    def marks(s: UdpSocket) -> set[int]:
        out = set()
        for fd in s.fileno():
            probe = socket.socket(fileno=fd)
            try:
                out.add(probe.getsockopt(socket.SOL_SOCKET, SO_MARK))
            finally:
                probe.detach()
        return out

    with UdpSocket(fwmark=0x51) as s:
        assert marks(s) == {0x51}
        s.set_fwmark(0xCA6C)
        assert marks(s) == {0xCA6C}
        s.rebind(0)
        assert marks(s) == {0xCA6C}  # a rebind keeps the mark
        s.set_fwmark(0)
        assert marks(s) == {0}


def test_errors_are_counted_never_raised(netlab: Lab) -> None:
    ns = netlab.namespace()  # only lo: every non-local destination is unreachable
    with in_netns(ns.name):
        s = UdpSocket()
    with s:
        s.send_batch(("198.18.9.9", 51820), [b"a"] * 3)
        s.send_batch(("fd00:9::9", 51820), [b"b"] * 4)
        assert s.stats.send_errors == {errno.ENETUNREACH: 7}
        # A closed port on loopback: the ICMP port-unreachable must not end up as an exception anywhere.
        s.send_batch(("127.0.0.1", 9), [b"c"] * 2)
        s.send_batch(("::1", 9), [b"d"])
        time.sleep(0.05)
        for fd in s.fileno():
            assert s.recv_batch(fd) == []


def sticky_pair(netlab: Lab) -> tuple[UdpSocket, socket.socket, socket.socket]:
    """A server UdpSocket (on 0.0.0.0/::) in a namespace with two addresses per family, and two client sockets
    in another namespace; the server's default source is the first address of each family."""
    server_ns, client_ns = netlab.namespace(), netlab.namespace()
    netlab.veth(server_ns, ["198.18.7.1/24", "198.18.7.2/24", "fd00:7::1/64", "fd00:7::2/64"],
                client_ns, ["198.18.7.3/24", "fd00:7::3/64"])
    with in_netns(server_ns.name):
        server = UdpSocket()
    with in_netns(client_ns.name):
        c4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for c in (c4, c6):
        c.bind(("", 0))
        c.settimeout(3)
    return server, c4, c6


@pytest.mark.parametrize("offload", [True, False])
def test_sticky_source_replies_from_the_address_the_peer_wrote_to(netlab: Lab, offload: bool) -> None:
    server, c4, c6 = sticky_pair(netlab)
    server.offload = offload
    server.gso = server.gso and offload
    with server, c4, c6:
        for client, addrs in ((c4, ("198.18.7.2", "198.18.7.1")), (c6, ("fd00:7::2", "fd00:7::1"))):
            for addr in addrs:
                client.sendto(b"hello " + addr.encode(), (addr, server.port))
                ((data, peer),) = drain(server, 1)
                assert data == b"hello " + addr.encode()
                assert server.source_for(peer) == addr
                server.send_batch(peer, [b"r1" * 500, b"r2" * 500, b"r3"])  # a GSO run when offload is on
                for want in (b"r1" * 500, b"r2" * 500, b"r3"):
                    reply, src = client.recvfrom(2000)
                    assert reply == want
                    assert src[0] == addr, f"reply came from {src[0]}, peer wrote to {addr}"
        assert server.stats.sticky_source_resets == 0


def test_sticky_source_that_vanished_is_dropped(netlab: Lab) -> None:
    server, c4, c6 = sticky_pair(netlab)
    server_ns = netlab.namespaces[0]
    with server, c4, c6:
        for resets, (client, gone, default, plen) in enumerate(
            ((c4, "198.18.7.2", "198.18.7.1", 24), (c6, "fd00:7::2", "fd00:7::1", 64)), start=1
        ):
            client.sendto(b"hi", (gone, server.port))
            ((_, peer),) = drain(server, 1)
            assert server.source_for(peer) == gone
            server_ns.run(["ip", "addr", "del", f"{gone}/{plen}", "dev", netlab_veth_name(server_ns)])
            server.send_batch(peer, [b"after", b"after"])
            for _ in range(2):
                data, src = client.recvfrom(100)
                assert (data, src[0]) == (b"after", default)
            assert server.source_for(peer) is None
            assert server.stats.sticky_source_resets == resets


def netlab_veth_name(ns: object) -> str:
    from tests.netns import Namespace

    assert isinstance(ns, Namespace)
    out = ns.run(["ip", "-o", "link", "show", "type", "veth"]).stdout
    return out.split(":")[1].strip().split("@")[0]


@pytest.mark.parametrize("text,want", [
    ("::ffff:198.18.0.1", "198.18.0.1"), ("FD00:0:0::01", "fd00::1"), ("[fd00::1]", "fd00::1"),
    ("198.18.0.1", "198.18.0.1"), ("fe80::1%eth0", "fe80::1"),
])
def test_canonical_host(text: str, want: str) -> None:
    assert canonical_host(text) == want


def test_ipv6_endpoints_are_canonical_and_v4_mapped_sends_go_over_ipv4() -> None:
    with UdpSocket() as a, UdpSocket() as b:
        a.send_batch(("::1", b.port), [b"v6"])
        a.send_batch(("::ffff:127.0.0.1", b.port), [b"mapped"])
        got = sorted(drain(b, 2))
        assert got == [(b"mapped", ("127.0.0.1", a.port)), (b"v6", ("::1", a.port))]


def test_gso_refused_by_the_path_falls_back_to_single_datagrams(netlab: Lab) -> None:
    """A GSO segment larger than the path MTU gets EINVAL from the kernel: the run goes out one by one (and IP
    fragments each datagram), nothing is lost, nothing raised."""
    a, b = netlab.namespace(), netlab.namespace()
    netlab.veth(a, ["198.18.8.1/24", "fd00:8::1/64"], b, ["198.18.8.2/24", "fd00:8::2/64"])
    with in_netns(a.name):
        tx = UdpSocket()
    with in_netns(b.name):
        rx = UdpSocket()
    with tx, rx:
        assert tx.gso
        big = [b"\x04" + bytes([i]) * 1600 for i in range(5)]  # transport data: the steered data socket
        small = [b"\x04" + bytes([i]) * 1000 for i in range(5)]
        for host in ("198.18.8.2", "fd00:8::2"):
            tx.send_batch((host, rx.port), big + small)
            got = drain(rx, 10)
            assert [d for d, _ in got] == big + small
        assert tx.stats.gso_fallbacks == 2
        assert tx.stats.gso_sends == 2  # the 1000-byte runs still went as GSO
        assert tx.stats.datagrams_sent == 20 and not tx.stats.send_errors


def test_socket_buffers_are_forced_to_8_mib() -> None:
    with UdpSocket() as s:
        for fd in s.fileno():
            if fd in s.handshake_fds:
                continue
            probe = socket.socket(fileno=fd)
            try:
                # The kernel reports twice what was set (bookkeeping overhead); below 8 MiB means the force
                # failed.
                assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 << 20
                assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 8 << 20
            finally:
                probe.detach()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_steering_puts_transport_data_and_handshakes_in_separate_sockets(host: str) -> None:
    messages = [bytes([kind, 0, 0, 0]) + bytes(size) for kind, size in ((4, 28), (1, 144), (2, 88), (3, 60), (4, 1400))]
    messages += [b"\x04", b"\x05garbage", b"\x00\x04"]
    with UdpSocket() as rx, UdpSocket() as tx:
        tx.send_batch((host, rx.port), messages)
        got: dict[bool, list[bytes]] = {True: [], False: []}
        deadline = time.monotonic() + 3
        while sum(map(len, got.values())) < len(messages) and time.monotonic() < deadline:
            for fd in rx.fileno():
                got[fd in rx.handshake_fds] += [bytes(d) for d, _ in rx.recv_batch(fd)]
        # Message type 4 (transport data) goes to the data socket, whatever its length; everything else, empty
        # datagrams included, to the small handshake socket.
        assert sorted(got[False]) == sorted(m for m in messages if m[:1] == b"\x04")
        assert sorted(got[True]) == sorted(m for m in messages if m[:1] != b"\x04")
        # An empty datagram has no byte 0: the program's load fails, it returns 0, and the data socket gets it
        # (the core drops it as malformed).
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(b"", (host, rx.port))
        time.sleep(0.1)
        data_fds = [fd for fd in rx.fileno() if fd not in rx.handshake_fds]
        assert [bytes(d) for fd in data_fds for d, _ in rx.recv_batch(fd)] == [b""]


def test_handshake_socket_has_a_small_buffer() -> None:
    with UdpSocket() as s:
        for fd in s.handshake_fds:
            probe = socket.socket(fileno=fd)
            try:
                # Twice what was set (kernel bookkeeping): a few hundred handshake messages, not 8 MiB.
                assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * HANDSHAKE_SOCKET_BUFFER
            finally:
                probe.detach()


def test_a_steered_port_is_refused_to_another_reuseport_socket_bound_the_plain_way() -> None:
    # A second daemon (or wireguard-go) on the same port gets EADDRINUSE, exactly as without steering.
    with UdpSocket() as first:
        with pytest.raises(OSError) as err:
            UdpSocket(port=first.port)
        assert err.value.errno == errno.EADDRINUSE


def test_rebind_and_close_take_the_handshake_sockets_along() -> None:
    with UdpSocket() as s:
        before = set(s.fileno())
        s.rebind(0)
        after = set(s.fileno())
        assert len(after) == 4 and len(s.handshake_fds) == 2 and s.handshake_fds <= after
        for fd in before - after:  # the old descriptors are closed (unless reused by the new sockets)
            with pytest.raises(OSError):
                os.fstat(fd)
    assert s.fileno() == [] and not s.handshake_fds


def test_a_handshake_flood_overflows_only_the_handshake_socket_and_is_counted() -> None:
    with UdpSocket() as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(3000):  # more initiations than the 256 KiB queue holds (a few hundred)
            tx.sendto(b"\x01\0\0\0" + bytes(144), ("127.0.0.1", rx.port))
        for i in range(100):
            tx.sendto(b"\x04\0\0\0" + i.to_bytes(4, "big") + bytes(24), ("127.0.0.1", rx.port))
        data_drops, handshake_drops = rx.queue_drops()
        assert data_drops == 0 and handshake_drops > 1000
        data = [d for fd in rx.fileno() if fd not in rx.handshake_fds for d, _ in rx.recv_batch(fd)]
        assert [bytes(d[4:8]) for d in data] == [i.to_bytes(4, "big") for i in range(100)]


def test_handshake_backlog_estimates_what_waits_in_the_handshake_socket() -> None:
    with UdpSocket() as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        assert rx.handshake_backlog() == 0
        for _ in range(200):
            tx.sendto(b"\x01\0\0\0" + bytes(144), ("127.0.0.1", rx.port))
        for _ in range(50):
            tx.sendto(b"\x04\0\0\0" + bytes(28), ("127.0.0.1", rx.port))  # data does not count
        # The estimate comes from queued bytes: within a factor of two of the truth is what it is for.
        assert 100 <= rx.handshake_backlog() <= 400
        for fd in rx.handshake_fds:
            while rx.recv_batch(fd):
                pass
        assert rx.handshake_backlog() == 0
    with UdpSocket(steer=False) as plain:
        assert plain.handshake_backlog() == 0


def _gso_runs_reference(sizes: list[int]) -> list[tuple[int, int, int]]:
    """The rule, one datagram at a time: a run takes datagrams while none is bigger than the first, stops after
    a shorter one, and stays within the kernel's segment and byte limits."""
    runs, i = [], 0
    while i < len(sizes):
        size, j, total = sizes[i], i + 1, sizes[i]
        while j < min(len(sizes), i + udp.MAX_GSO_SEGMENTS) and size:
            m = sizes[j]
            if m > size or total + m > udp.MAX_GSO_BYTES:
                break
            total, j = total + m, j + 1
            if m < size:
                break
        runs.append((i, j, size))
        i = j
    return runs


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from([1452, 700, 500, 64, 0, 65507, 32768]), st.integers(0, 2000)),
                          st.sampled_from([1, 1, 2, 50, 127, 128, 129, 200])), max_size=12))
def test_gso_runs_follow_the_rule(runs: list[tuple[int, int]]) -> None:
    sizes = [size for size, repeat in runs for _ in range(repeat)]
    assert list(udp.gso_runs(sizes)) == _gso_runs_reference(sizes)
