"""Tests for cryptokey routing: unit cases, then every operation compared with a slow linear-scan model (the
style of the Linux allowedips selftest's randomized check against a naive implementation)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.protocol.allowedips import AllowedIPs

Network = IPv4Network | IPv6Network


@dataclass
class Peer:
    """A mutable dataclass, hence unhashable: the table must compare peers by identity, not by hash or ==."""

    name: str


def net(text: str) -> Network:
    return ip_network(text, strict=False)


def addr(text: str) -> bytes:
    return ip_address(text).packed


def ipv4_packet(src: str, dst: str) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, addr(src), addr(dst))
    return header + bytes(8)


def ipv6_packet(src: str, dst: str) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, addr(src), addr(dst)) + bytes(8)


@pytest.fixture
def peers() -> tuple[Peer, Peer, Peer]:
    return Peer("a"), Peer("b"), Peer("c")


def test_longest_prefix_wins(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, c = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("10.0.0.0/8"), a)
    table.insert(net("10.1.0.0/16"), b)
    table.insert(net("10.1.2.3/32"), c)
    assert table.lookup(addr("10.9.9.9")) is a
    assert table.lookup(addr("10.1.9.9")) is b
    assert table.lookup(addr("10.1.2.3")) is c
    assert table.lookup(addr("10.1.2.4")) is b
    assert table.lookup(addr("11.0.0.1")) is None
    assert len(table) == 3


def test_peers_with_equal_fields_are_distinct() -> None:
    first, second = Peer("same"), Peer("same")
    assert first == second
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("10.0.0.0/24"), first)
    table.insert(net("10.0.1.0/24"), second)
    assert table.lookup(addr("10.0.0.1")) is first
    assert table.lookup(addr("10.0.1.1")) is second
    assert not table.remove(net("10.0.0.0/24"), second)
    assert table.entries_for(second) == [net("10.0.1.0/24")]


def test_insert_for_another_peer_moves_the_prefix(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("192.168.1.0/24"), a)
    table.insert(net("10.0.0.1/32"), a)
    table.insert(net("192.168.1.0/24"), b)
    assert table.lookup(addr("192.168.1.77")) is b
    assert table.entries_for(a) == [net("10.0.0.1/32")]
    assert table.entries_for(b) == [net("192.168.1.0/24")]
    assert len(table) == 2
    assert not table.remove(net("192.168.1.0/24"), a)
    assert table.lookup(addr("192.168.1.77")) is b


def test_entries_in_insertion_order_and_reinsert_moves_to_tail(peers: tuple[Peer, Peer, Peer]) -> None:
    """wireguard-go appends to the peer's entry list on every insert (Linux: list_move_tail), and `wg show`
    prints that list as it comes."""
    a, _, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    order = ["10.0.0.0/24", "fd00::/64", "0.0.0.0/0", "192.168.0.1/32", "::/0", "10.0.0.0/8"]
    for text in order:
        table.insert(net(text), a)
    assert table.entries_for(a) == [net(t) for t in order]
    table.insert(net("fd00::/64"), a)
    assert table.entries_for(a) == [net(t) for t in order if t != "fd00::/64"] + [net("fd00::/64")]
    assert len(table) == len(order)


def test_host_bits_are_masked(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(ip_network("10.0.0.5/24", strict=False), a)
    table.insert(ip_network("fd00::1:2:3/64", strict=False), a)
    assert table.entries_for(a) == [IPv4Network("10.0.0.0/24"), IPv6Network("fd00::/64")]
    assert table.lookup(addr("10.0.0.200")) is a
    assert table.lookup(addr("fd00::ffff")) is a
    # The same prefix written with other host bits is the same prefix: it moves.
    table.insert(ip_network("10.0.0.77/24", strict=False), b)
    assert table.entries_for(a) == [IPv6Network("fd00::/64")]
    assert table.remove(ip_network("10.0.0.1/24", strict=False), b)
    assert len(table) == 1


def test_default_routes_and_families_are_separate(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, c = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("0.0.0.0/0"), a)
    assert table.lookup(addr("1.2.3.4")) is a
    assert table.lookup(addr("255.255.255.255")) is a
    assert table.lookup(addr("::")) is None
    assert table.lookup(addr("::ffff:1.2.3.4")) is None  # a v4-mapped v6 address is still v6
    table.insert(net("::/0"), b)
    table.insert(net("::ffff:0:0/96"), c)
    assert table.lookup(addr("2001:db8::1")) is b
    assert table.lookup(addr("::ffff:10.0.0.1")) is c
    assert table.lookup(addr("10.0.0.1")) is a
    assert table.entries_for(a) == [net("0.0.0.0/0")]
    assert table.remove(net("0.0.0.0/0"), a)
    assert table.lookup(addr("1.2.3.4")) is None
    assert table.lookup(addr("2001:db8::1")) is b


def test_remove_only_if_owned(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("10.0.0.0/24"), a)
    assert not table.remove(net("10.0.0.0/24"), b)
    assert not table.remove(net("10.0.0.0/25"), a)
    assert not table.remove(net("10.0.1.0/24"), a)
    assert table.lookup(addr("10.0.0.1")) is a
    assert table.remove(net("10.0.0.0/24"), a)
    assert not table.remove(net("10.0.0.0/24"), a)
    assert table.lookup(addr("10.0.0.1")) is None
    assert table.entries_for(a) == []
    assert len(table) == 0


def test_remove_by_peer(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("10.0.0.0/8"), a)
    table.insert(net("10.1.0.0/16"), b)
    table.insert(net("10.1.1.0/24"), a)
    table.insert(net("fd00::/8"), a)
    table.remove_by_peer(a)
    assert table.entries_for(a) == []
    assert table.lookup(addr("10.1.1.1")) is b
    assert table.lookup(addr("10.2.0.0")) is None
    assert table.lookup(addr("fd00::1")) is None
    assert len(table) == 1
    table.remove_by_peer(a)  # nothing left: a no-op
    table.insert(net("10.1.1.0/24"), a)
    assert table.lookup(addr("10.1.1.1")) is a


def test_clear(peers: tuple[Peer, Peer, Peer]) -> None:
    a, _, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("10.0.0.0/8"), a)
    table.insert(net("::/0"), a)
    table.clear()
    assert len(table) == 0
    assert table.lookup(addr("10.0.0.1")) is None
    assert table.lookup(addr("::1")) is None
    assert table.entries_for(a) == []


def test_lookup_src_and_dst_read_the_header(peers: tuple[Peer, Peer, Peer]) -> None:
    a, b, _ = peers
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert(net("10.0.0.1/32"), a)
    table.insert(net("10.0.0.2/32"), b)
    table.insert(net("fd00::1/128"), a)
    table.insert(net("fd00::2/128"), b)
    v4 = ipv4_packet("10.0.0.1", "10.0.0.2")
    v6 = ipv6_packet("fd00::1", "fd00::2")
    for packet in (v4, v6):
        assert table.lookup_src(packet) is a
        assert table.lookup_dst(packet) is b
        view = memoryview(bytearray(packet))
        assert table.lookup_src(view) is a
        assert table.lookup_dst(view) is b
    # Exactly a bare header is enough.
    assert table.lookup_dst(v4[:20]) is b
    assert table.lookup_dst(v6[:40]) is b


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45",
        ipv4_packet("10.0.0.1", "10.0.0.2")[:19],
        ipv6_packet("fd00::1", "fd00::2")[:39],
        bytes([0x55]) + ipv4_packet("10.0.0.1", "10.0.0.2")[1:],  # version 5
        bytes([0x05]) + ipv4_packet("10.0.0.1", "10.0.0.2")[1:],  # version 0
        bytes([0x45]) + bytes(39),  # 40 bytes but v4 with unrouted addresses
        bytes([0x65]) + bytes(30),  # v6 too short
    ],
)
def test_malformed_packets_route_nowhere(packet: bytes) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("x")
    table.insert(net("10.0.0.0/8"), p)
    table.insert(net("fd00::/8"), p)
    assert table.lookup_src(packet) is None
    assert table.lookup_dst(packet) is None
    assert table.lookup_src(memoryview(packet)) is None


def test_v6_header_with_v4_route_does_not_cross() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("x")
    table.insert(net("0.0.0.0/0"), p)
    assert table.lookup_dst(ipv6_packet("::1", "::2")) is None
    assert table.lookup_dst(ipv4_packet("1.1.1.1", "2.2.2.2")) is p


def test_bad_input_is_an_error() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ValueError):
        table.lookup(b"\x00" * 5)
    with pytest.raises(ValueError):
        table.insert(net("10.0.0.0/8"), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.insert("10.0.0.0/8", Peer("x"))  # type: ignore[arg-type]
    assert len(table) == 0


def test_many_peers_and_lengths() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    peer_list = [Peer(str(i)) for i in range(300)]
    for i, p in enumerate(peer_list):
        table.insert(IPv4Network((0x0A000000 | i << 8, 24)), p)
        table.insert(IPv4Network((0x0A000000 | i << 8 | 7, 32)), peer_list[-1 - i])
        table.insert(IPv6Network(((0xFD << 120) | (i << 64), 64)), p)
    assert len(table) == 900
    for i, p in enumerate(peer_list):
        assert table.lookup((0x0A000000 | i << 8 | 9).to_bytes(4, "big")) is p
        assert table.lookup((0x0A000000 | i << 8 | 7).to_bytes(4, "big")) is peer_list[-1 - i]
        assert table.lookup(((0xFD << 120) | (i << 64) | 5).to_bytes(16, "big")) is p
        assert len(table.entries_for(p)) == 3
    for p in peer_list[::2]:
        table.remove_by_peer(p)
    assert len(table) == 450


# --- model-based property test --------------------------------------------------------------------------


class NaiveAllowedIPs:
    """The obviously-correct version: one list in insertion order, scanned for the longest matching prefix."""

    def __init__(self) -> None:
        self.entries: list[tuple[Network, Peer]] = []

    def insert(self, network: Network, peer: Peer) -> None:
        self.entries = [(n, p) for n, p in self.entries if n != network]
        self.entries.append((network, peer))

    def remove(self, network: Network, peer: Peer) -> bool:
        for i, (n, p) in enumerate(self.entries):
            if n == network and p is peer:
                del self.entries[i]
                return True
        return False

    def remove_by_peer(self, peer: Peer) -> None:
        self.entries = [(n, p) for n, p in self.entries if p is not peer]

    def lookup(self, address: bytes) -> Peer | None:
        ip = ip_address(address)
        best: tuple[int, Peer] | None = None
        for n, p in self.entries:
            if n.version == ip.version and ip in n and (best is None or n.prefixlen > best[0]):
                best = (n.prefixlen, p)
        return best[1] if best else None

    def entries_for(self, peer: Peer) -> list[Network]:
        return [n for n, p in self.entries if p is peer]


# Addresses cluster around a few bases so random prefixes nest and collide often.
_V4_BASES = [0x0A000000, 0x0A010000, 0xC0A80100, 0x00000000, 0xFFFFFF00]
_V6_BASES = [0xFD << 120, (0xFD << 120) | (1 << 64), 0x20010DB8 << 96, 0, (1 << 128) - 256]


@st.composite
def addresses(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        base = draw(st.sampled_from(_V4_BASES))
        low = draw(st.sampled_from([0xFF, 0xFFFF, 0xFFFFFFFF]))
        return ((base ^ draw(st.integers(0, low))) & 0xFFFFFFFF).to_bytes(4, "big")
    base = draw(st.sampled_from(_V6_BASES))
    low = draw(st.sampled_from([0xFF, (1 << 64) - 1, (1 << 128) - 1]))
    return ((base ^ draw(st.integers(0, low))) & ((1 << 128) - 1)).to_bytes(16, "big")


@st.composite
def networks(draw: st.DrawFn) -> Network:
    packed = draw(addresses())
    if len(packed) == 4:
        length = draw(st.one_of(st.integers(0, 32), st.sampled_from([8, 16, 24, 32])))
        return IPv4Network((int.from_bytes(packed, "big"), length), strict=False)
    length = draw(st.one_of(st.integers(0, 128), st.sampled_from([48, 64, 120, 128])))
    return IPv6Network((int.from_bytes(packed, "big"), length), strict=False)


PEERS = [Peer(f"p{i}") for i in range(4)]
_peer = st.sampled_from(PEERS)
_operation = st.one_of(
    st.tuples(st.just("insert"), networks(), _peer),
    st.tuples(st.just("insert"), networks(), _peer),
    st.tuples(st.just("remove"), networks(), _peer),
    st.tuples(st.just("remove_by_peer"), st.none(), _peer),
    st.tuples(st.just("lookup"), addresses(), st.none()),
)


@settings(max_examples=250, deadline=None)
@given(ops=st.lists(_operation, max_size=60), probes=st.lists(addresses(), max_size=10))
def test_against_naive_model(ops: list[tuple[str, object, Peer | None]], probes: list[bytes]) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    model = NaiveAllowedIPs()
    for kind, arg, peer in ops:
        if kind == "insert":
            assert isinstance(arg, IPv4Network | IPv6Network) and peer is not None
            table.insert(arg, peer)
            model.insert(arg, peer)
        elif kind == "remove":
            assert isinstance(arg, IPv4Network | IPv6Network) and peer is not None
            assert table.remove(arg, peer) is model.remove(arg, peer)
        elif kind == "remove_by_peer":
            assert peer is not None
            table.remove_by_peer(peer)
            model.remove_by_peer(peer)
        else:
            assert isinstance(arg, bytes)
            assert table.lookup(arg) is model.lookup(arg)
        assert len(table) == len(model.entries)
    for p in PEERS:
        assert table.entries_for(p) == model.entries_for(p)
    # Probe every inserted prefix's first and last address too: the edges are where masking bugs show.
    edges = [n[0].packed for n, _ in model.entries] + [n[-1].packed for n, _ in model.entries]
    for probe in probes + edges:
        expected = model.lookup(probe)
        assert table.lookup(probe) is expected
        if len(probe) == 4:
            packet = ipv4_packet("192.0.2.1", "192.0.2.1")
            packet = packet[:12] + probe + probe + packet[20:]
        else:
            packet = ipv6_packet("::", "::")
            packet = packet[:8] + probe + probe + packet[40:]
        assert table.lookup_src(packet) is expected
        assert table.lookup_dst(memoryview(packet)) is expected
