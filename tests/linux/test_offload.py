"""Property tests of the TSO split and TCP coalescing, checked against a slow checksum written plainly here."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgpy.linux import checksum, offload
from wgpy.linux.offload import (
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VNET_HDR,
    VNET_HDR_ZERO,
    OffloadError,
    coalesce,
    split_super_packet,
)


def slow_sum(data: bytes) -> int:
    """RFC 1071 the plain way: 16-bit big-endian words, end-around carry, in [0, 0xffff]."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] * 256 + data[i + 1]
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    return total


def slow_csum(data: bytes) -> int:
    return 0xFFFF - slow_sum(data)


def parse(pkt: bytes) -> dict[str, object]:
    """Header fields of an IPv4/IPv6 TCP/UDP packet without extension headers or IP options beyond IHL."""
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 15) * 4
        proto = pkt[9]
        src, dst = pkt[12:16], pkt[16:20]
    else:
        ihl = 40
        proto = pkt[6]
        src, dst = pkt[8:24], pkt[24:40]
    return {"v": v, "ihl": ihl, "proto": proto, "src": src, "dst": dst}


def pseudo(v: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if v == 4:
        return src + dst + bytes([0, proto]) + struct.pack(">H", length)
    return src + dst + struct.pack(">I", length) + b"\0\0\0" + bytes([proto])


def assert_valid(pkt: bytes) -> None:
    """Every length field and checksum of a plain IP packet is right (slow reference)."""
    h = parse(pkt)
    v, ihl, proto = h["v"], h["ihl"], h["proto"]
    assert isinstance(ihl, int) and isinstance(v, int) and isinstance(proto, int)
    assert isinstance(h["src"], bytes) and isinstance(h["dst"], bytes)
    if v == 4:
        assert struct.unpack_from(">H", pkt, 2)[0] == len(pkt)
        assert slow_sum(pkt[:ihl]) == 0xFFFF, "IPv4 header checksum"
    else:
        assert struct.unpack_from(">H", pkt, 4)[0] == len(pkt) - 40
    l4 = pkt[ihl:]
    if proto == 17:
        assert struct.unpack_from(">H", l4, 4)[0] == len(l4)
        assert struct.unpack_from(">H", l4, 6)[0] != 0, "UDP checksum 0 means none"
    assert slow_sum(pseudo(v, h["src"], h["dst"], proto, len(l4)) + l4) == 0xFFFF, "L4 checksum"


def fix_l4_checksum(pkt: bytearray) -> None:
    h = parse(bytes(pkt))
    ihl, proto, v = h["ihl"], h["proto"], h["v"]
    assert isinstance(ihl, int) and isinstance(proto, int) and isinstance(v, int)
    assert isinstance(h["src"], bytes) and isinstance(h["dst"], bytes)
    off = ihl + (16 if proto == 6 else 6)
    pkt[off : off + 2] = b"\0\0"
    c = slow_csum(pseudo(v, h["src"], h["dst"], proto, len(pkt) - ihl) + bytes(pkt[ihl:]))
    if proto == 17 and c == 0:
        c = 0xFFFF
    pkt[off : off + 2] = struct.pack(">H", c)


def build_super(
    v: int, proto: int, payload: bytes, gso_size: int, *, src: bytes | None = None, seq: int = 1000,
    flags: int = TCP_ACK | TCP_PSH, options: bytes = b"", ip_id: int = 7, ttl: int = 64, sport: int = 40000,
    dport: int = 5201, ack: int = 99, window: int = 512, checksum_field: int = 0xDEAD,
) -> tuple[bytes, bytes]:
    """A super-packet as the kernel hands it over: NEEDS_CSUM, hdr with gso fields, a junk/partial checksum."""
    if proto == 6:
        thl = 20 + len(options)
        l4h = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, (thl // 4) << 4, flags, window,
                          checksum_field, 0)
        l4h += options
        gso = offload.VIRTIO_NET_HDR_GSO_TCPV4 if v == 4 else offload.VIRTIO_NET_HDR_GSO_TCPV6
        coff = 16
    else:
        l4h = struct.pack(">HHHH", sport, dport, 8 + len(payload), checksum_field)
        gso = offload.VIRTIO_NET_HDR_GSO_UDP_L4
        coff = 6
    l4len = len(l4h) + len(payload)
    if v == 4:
        s = src or bytes([10, 0, 0, 1])
        ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + l4len, ip_id, 0x4000, ttl, proto, 0, s,
                                   bytes([10, 0, 0, 2])))
        ip[10:12] = struct.pack(">H", slow_csum(bytes(ip)))
    else:
        s = src or bytes.fromhex("fd000000000000000000000000000001")
        ip = bytearray(struct.pack(">IHBB16s16s", 0x60000000, l4len, proto, ttl, s,
                                   bytes.fromhex("fd000000000000000000000000000002")))
    ihl = len(ip)
    vnet = VNET_HDR.pack(offload.VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, ihl + len(l4h), gso_size, ihl, coff)
    return vnet, bytes(ip) + l4h + payload


@contextmanager
def numpy_mode(on: bool) -> Iterator[None]:
    old = checksum.use_numpy
    checksum.use_numpy = on and checksum.HAVE_NUMPY
    try:
        yield
    finally:
        checksum.use_numpy = old


TS_OPTION = b"\x01\x01\x08\x0a" + bytes.fromhex("0011223344556677")

options_st = st.sampled_from([b"", TS_OPTION, b"\x01\x01\x01\x01", b"\x02\x04\x05\xb4" + TS_OPTION])
flags_st = st.sampled_from([
    TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN, TCP_ACK | TCP_PSH | TCP_FIN, TCP_ACK | TCP_CWR,
    TCP_ACK | TCP_CWR | TCP_PSH,
])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v=st.sampled_from([4, 6]), proto=st.sampled_from([6, 17]), plen=st.integers(0, 9000),
    gso_size=st.integers(1, 1500), seq=st.integers(0, 2**32 - 1), ip_id=st.integers(0, 0xFFFF),
    flags=flags_st, options=options_st, use_np=st.booleans(), seed=st.integers(0, 255),
)
def test_split_coalesce_split_round_trip(
    v: int, proto: int, plen: int, gso_size: int, seq: int, ip_id: int, flags: int, options: bytes,
    use_np: bool, seed: int,
) -> None:
    payload = bytes((seed + i * 7) & 0xFF for i in range(plen))
    vnet, sup = build_super(v, proto, payload, gso_size, seq=seq, ip_id=ip_id, flags=flags,
                            options=options if proto == 6 else b"")
    with numpy_mode(use_np):
        segs = split_super_packet(vnet, sup)
    nseg = max(1, -(-plen // gso_size))
    assert len(segs) == nseg
    hl = len(sup) - plen
    joined = b""
    for i, s in enumerate(segs):
        assert_valid(s)
        assert len(s) - hl <= gso_size
        joined += s[hl:]
        ihl = 20 if v == 4 else 40
        if v == 4:
            assert struct.unpack_from(">H", s, 4)[0] == (ip_id + i) & 0xFFFF
        if proto == 6:
            assert struct.unpack_from(">I", s, ihl + 4)[0] == (seq + i * gso_size) & 0xFFFFFFFF
            f = s[ihl + 13]
            assert bool(f & TCP_CWR) == bool(flags & TCP_CWR and i == 0)
            assert bool(f & (TCP_FIN | TCP_PSH)) == bool(flags & (TCP_FIN | TCP_PSH) and i == nseg - 1)
            assert s[ihl + 20 : hl] == (options if proto == 6 else b"")
    assert joined == payload
    with numpy_mode(use_np):
        again = [x for h, p in coalesce(segs, udp=True) for x in split_super_packet(h, p)]
    assert again == segs
    if proto == 17:
        assert coalesce(segs) == [(VNET_HDR_ZERO, s) for s in segs]  # UDP merges only when asked (USO on)


def flow_of(pkt: bytes) -> bytes:
    h = parse(pkt)
    ihl = h["ihl"]
    assert isinstance(ihl, int) and isinstance(h["src"], bytes)
    return h["src"] + bytes([pkt[9] if pkt[0] >> 4 == 4 else pkt[6]]) + pkt[ihl : ihl + 4]


@st.composite
def mutated_streams(draw: st.DrawFn) -> list[bytes]:
    """Segments of up to three flows, interleaved, with some segments mutated so that they must not merge."""
    streams = []
    for k in range(draw(st.integers(1, 3))):
        v = draw(st.sampled_from([4, 6]))
        proto = draw(st.sampled_from([6, 6, 17]))
        plen = draw(st.integers(1, 6000))
        g = draw(st.integers(1, 1400))
        src = bytes([10, 0, 0, 10 + k]) if v == 4 else bytes(15) + bytes([10 + k])
        vnet, sup = build_super(v, proto, bytes((i * 13 + k) & 0xFF for i in range(plen)), g, src=src,
                                seq=draw(st.integers(0, 2**32 - 1)),
                                options=draw(options_st) if proto == 6 else b"", flags=draw(flags_st))
        segs = [bytearray(s) for s in split_super_packet(vnet, sup)]
        ihl = 20 if v == 4 else 40
        for s in segs:
            mutation = draw(st.sampled_from(["none"] * 6 + ["syn", "fin", "rst", "urg", "psh", "ts", "ttl",
                                                            "window", "ack", "drop"]))
            if proto == 17 and mutation not in ("ttl", "drop"):
                mutation = "none"
            if mutation in ("syn", "fin", "rst", "urg", "psh"):
                s[ihl + 13] |= {"syn": TCP_SYN, "fin": TCP_FIN, "rst": TCP_RST, "urg": TCP_URG,
                                "psh": TCP_PSH}[mutation]
            elif mutation == "ts" and proto == 6 and s[ihl + 12] >> 4 > 5:
                s[-(len(s) - ihl - (s[ihl + 12] >> 4) * 4) - 1] ^= 0x5A  # last byte of the options
            elif mutation == "ttl":
                if v == 4:
                    s[8] ^= 1
                    s[10:12] = b"\0\0"
                    s[10:12] = struct.pack(">H", slow_csum(bytes(s[:20])))
                else:
                    s[7] ^= 1
            elif mutation == "window":
                s[ihl + 14] ^= 1
            elif mutation == "ack":
                s[ihl + 8] ^= 1
            elif mutation == "drop":
                s.clear()
                continue
            fix_l4_checksum(s)
        streams.append([bytes(s) for s in segs if s])
    order = draw(st.permutations([k for k, s in enumerate(streams) for _ in s]))
    cursors = [0] * len(streams)
    out = []
    for k in order:
        out.append(streams[k][cursors[k]])
        cursors[k] += 1
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=mutated_streams(), data_valid=st.booleans())
def test_coalesce_never_merges_across_flows_gaps_flags_or_options(
    stream: list[bytes], data_valid: bool
) -> None:
    for s in stream:
        assert_valid(s)
    merged = coalesce(stream, data_valid=data_valid, udp=True)
    per_flow_in: dict[bytes, list[bytes]] = {}
    for s in stream:
        per_flow_in.setdefault(flow_of(s), []).append(s)
    per_flow_out: dict[bytes, list[bytes]] = {}
    for h, p in merged:
        pieces = split_super_packet(h, p)
        assert len(p) <= 65535
        if len(pieces) == 1:
            flags = VNET_HDR.unpack(h)[0]
            assert h == (offload.VNET_HDR_DATA_VALID if data_valid else VNET_HDR_ZERO), flags
        assert len({flow_of(x) for x in pieces}) == 1, "a super-packet mixes flows"
        for x in pieces:
            per_flow_out.setdefault(flow_of(x), []).append(x)
    assert per_flow_out == per_flow_in


def test_coalesce_merges_a_plain_run_and_respects_64k() -> None:
    segs = []
    for k in range(2):  # two back-to-back 40 × 1368-byte super-packets: more than one 64 KB write can hold
        vnet, sup = build_super(4, 6, bytes(range(228)) * 240, 1368, options=TS_OPTION, flags=TCP_ACK,
                                seq=1000 + k * 54720, ip_id=7 + 40 * k)
        segs += split_super_packet(vnet, sup)
    segs = segs[:60]
    assert len(segs) == 60
    merged = coalesce(segs)
    assert len(merged) == 2
    for h, p in merged:
        flags, gso_type, hdr_len, gso_size, cs, co = VNET_HDR.unpack(h)
        want = (1, offload.VIRTIO_NET_HDR_GSO_TCPV4, 52, 1368, 20, 16)
        assert (flags, gso_type, hdr_len, gso_size, cs, co) == want
        assert len(p) <= 65535
        # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, so summing from csum_start completes it.
        h4 = parse(p)
        assert isinstance(h4["src"], bytes) and isinstance(h4["dst"], bytes)
        ps = slow_sum(pseudo(4, h4["src"], h4["dst"], 6, len(p) - 20))
        assert struct.unpack_from(">H", p, 36)[0] % 0xFFFF == ps % 0xFFFF
        assert slow_sum(p[:20]) == 0xFFFF
    assert [x for h, p in merged for x in split_super_packet(h, p)] == segs


def test_non_tcp_and_short_packets_pass_alone() -> None:
    _, udp = build_super(4, 17, b"x" * 100, 100)
    pkts = [udp, b"\x45" + bytes(10), b"\x60" * 40]
    assert coalesce(pkts) == [(VNET_HDR_ZERO, p) for p in pkts]


@pytest.mark.parametrize("v,proto", [(4, 6), (6, 6), (4, 17), (6, 17)])
def test_gso_none_needs_csum_is_completed(v: int, proto: int) -> None:
    """Single packets from a TUN with CSUM on carry only the pseudo-header sum: it must be finished."""
    _, pkt = build_super(v, proto, bytes(range(77)), 1000, checksum_field=0)
    h = parse(pkt)
    assert isinstance(h["src"], bytes) and isinstance(h["dst"], bytes)
    ihl = 20 if v == 4 else 40
    off = ihl + (16 if proto == 6 else 6)
    partial = bytearray(pkt)
    partial[off : off + 2] = struct.pack(">H", slow_sum(pseudo(v, h["src"], h["dst"], proto, len(pkt) - ihl)))
    hdr = VNET_HDR.pack(offload.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, ihl, off - ihl)
    (done,) = split_super_packet(hdr, bytes(partial))
    assert_valid(done)
    assert split_super_packet(VNET_HDR_ZERO, pkt) == [pkt]


@pytest.mark.parametrize("hdr", [
    VNET_HDR.pack(1, 1, 0, 0, 20, 16),          # gso_size 0
    VNET_HDR.pack(1, 4, 0, 100, 20, 16),        # TCPV6 on an IPv4 packet
    VNET_HDR.pack(1, 1, 0, 100, 24, 16),        # csum_start is not the IHL
    VNET_HDR.pack(1, 1, 0, 100, 20, 6),         # bad checksum offset
    VNET_HDR.pack(1, 9, 0, 100, 20, 16),        # unknown GSO type
    VNET_HDR.pack(1, 0, 0, 0, 20, 5000),        # NEEDS_CSUM outside the packet
    b"\x01\x01",                                # short header
])
def test_malformed_headers_raise_offload_error(hdr: bytes) -> None:
    _, pkt = build_super(4, 6, b"y" * 300, 100)
    with pytest.raises(OffloadError):
        split_super_packet(hdr, pkt)


@given(data=st.binary(max_size=3000), size=st.integers(1, 1500))
def test_checksum_paths_agree_with_slow_reference(data: bytes, size: int) -> None:
    assert checksum.ones_sum(data) % 0xFFFF == slow_sum(data) % 0xFFFF
    want = [slow_sum(data[i : i + size]) % 0xFFFF for i in range(0, len(data), size)]
    for mode in (False, True):
        with numpy_mode(mode):
            assert checksum.segment_sums(data, size) == want
    c = checksum.checksum(data)
    assert c != 0
    assert slow_sum(data + b"\0" * (len(data) % 2) + struct.pack(">H", c)) == 0xFFFF


def test_everything_works_without_numpy() -> None:
    """numpy is optional: with its import blocked the module falls back to the pure path at import."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from wgpy.linux import checksum\n"
        "assert not checksum.HAVE_NUMPY and not checksum.use_numpy\n"
        "from tests.linux.test_offload import build_super, assert_valid\n"
        "from wgpy.linux.offload import split_super_packet, coalesce\n"
        "h, p = build_super(4, 6, bytes(range(256)) * 40, 1000)\n"
        "segs = split_super_packet(h, p)\n"
        "assert len(segs) == 11\n"
        "[assert_valid(s) for s in segs]\n"
        "assert [x for hh, pp in coalesce(segs) for x in split_super_packet(hh, pp)] == segs\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def _with_ip_id(pkt: bytes, ip_id: int, df: bool = True) -> bytes:
    b = bytearray(pkt)
    b[4:6] = struct.pack(">H", ip_id)
    b[6] = 0x40 if df else 0
    b[10:12] = b"\0\0"
    b[10:12] = struct.pack(">H", slow_csum(bytes(b[:20])))
    return bytes(b)


@pytest.mark.parametrize("proto", [6, 17])
def test_ipv4_ids_must_run_on_or_stay_fixed_under_df(proto: int) -> None:
    vnet, sup = build_super(4, proto, bytes(4000), 1000, flags=TCP_ACK)
    segs = split_super_packet(vnet, sup)
    assert len(coalesce(segs, udp=True)) == 1  # IDs 7, 8, 9, 10
    fixed = [_with_ip_id(s, 0) for s in segs]
    (merged,) = coalesce(fixed, udp=True)  # DF with a fixed ID (unconnected UDP sockets send these): merged
    assert [x[20:] for x in split_super_packet(*merged)] == [x[20:] for x in fixed]
    assert len(coalesce([_with_ip_id(s, 0, df=False) for s in segs], udp=True)) == 4  # no DF: must run on
    gap = [_with_ip_id(s, i * 2) for i, s in enumerate(segs)]
    assert len(coalesce(gap, udp=True)) == 4


def test_ipv6_extension_header_before_tcp_is_kept_and_counted() -> None:
    """csum_start past an IPv6 extension header: every segment keeps it, and the payload length covers it."""
    payload = bytes(range(251)) * 12  # 3012 bytes -> 1000, 1000, 1000, 12
    hbh = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # hop-by-hop: next header TCP, PadN to 8 bytes
    tcp = struct.pack(">HHIIBBHHH", 1, 2, 5000, 9, 5 << 4, TCP_ACK | TCP_PSH, 100, 0, 0)
    src, dst = bytes(15) + b"\1", bytes(15) + b"\2"
    ip = struct.pack(">IHBB16s16s", 0x60000000, 8 + 20 + len(payload), 0, 64, src, dst)  # next header: HBH
    vnet = VNET_HDR.pack(1, offload.VIRTIO_NET_HDR_GSO_TCPV6, 68, 1000, 48, 16)
    segs = split_super_packet(vnet, ip + hbh + tcp + payload)
    assert [len(s) - 68 for s in segs] == [1000, 1000, 1000, 12]
    for i, s in enumerate(segs):
        assert s[40:48] == hbh
        assert struct.unpack_from(">H", s, 4)[0] == len(s) - 40
        l4 = s[48:]
        assert slow_sum(pseudo(6, src, dst, 6, len(l4)) + l4) == 0xFFFF
        assert struct.unpack_from(">I", l4, 4)[0] == 5000 + 1000 * i
    assert coalesce(segs) == [(VNET_HDR_ZERO, s) for s in segs]  # extension headers: never merged


@st.composite
def bulk_streams(draw: st.DrawFn) -> list[bytes | memoryview]:
    """What a receiver hands the TUN writer during bulk transfers: runs of full-size TCP segments of a few
    IPv4 and IPv6 flows, interleaved run by run, with IDs and sequence numbers near their wrap, other header
    lengths, fixed IDs under DF, and now and then a segment that must not continue its run (a gap, other flags,
    options, TTL or hop limit, window or acknowledgement, a shorter or longer payload, an ID out of step)."""
    flows = []
    for k in range(draw(st.integers(1, 3))):
        v = draw(st.sampled_from([4, 4, 6]))
        ihl = 20 if v == 4 else 40
        src = bytes([10, 0, 0, 10 + k]) if v == 4 else bytes(15) + bytes([10 + k])
        options = draw(st.sampled_from([TS_OPTION, TS_OPTION, b"", b"\x01\x01\x01\x01", TS_OPTION + bytes(8)]))
        gso = draw(st.sampled_from([1368, 1000, 1448, 7]))
        segments = []
        seq = draw(st.sampled_from([1000, 2**32 - 3 * gso, 2**32 - 1, draw(st.integers(0, 2**32 - 1))]))
        ip_id = draw(st.sampled_from([7, 0xFFFF - 3, 0xFFFF, draw(st.integers(0, 0xFFFF))]))
        for _ in range(draw(st.integers(1, 3))):  # back-to-back super-packets of the flow
            count = min(draw(st.integers(1, 50)), 60000 // gso)
            flags = draw(st.sampled_from([TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH]))
            vnet, sup = build_super(v, 6, bytes((i * 11 + k) & 0xFF for i in range(count * gso)), gso, src=src,
                                    seq=seq, ip_id=ip_id, flags=flags, options=options)
            segments += split_super_packet(vnet, sup)
            seq = (seq + count * gso) & 0xFFFFFFFF
            ip_id = (ip_id + count) & 0xFFFF
        if v == 4 and draw(st.integers(0, 4)) == 0:
            segments = [_with_ip_id(s, 0) for s in segments]  # DF with one fixed ID
        for i in draw(st.lists(st.integers(0, len(segments) - 1), max_size=3)):
            s = bytearray(segments[i])
            mutation = draw(st.sampled_from(["gap", "psh", "ttl", "window", "ack", "ts", "short", "long", "id"]))
            hl = ihl + (s[ihl + 12] >> 4) * 4
            if mutation == "gap":
                s[ihl + 4 : ihl + 8] = struct.pack(">I", (struct.unpack_from(">I", s, ihl + 4)[0] + 1) & 0xFFFFFFFF)
            elif mutation == "psh":
                s[ihl + 13] |= TCP_PSH
            elif mutation == "ttl":
                s[8 if v == 4 else 7] ^= 1
            elif mutation == "window":
                s[ihl + 14] ^= 1
            elif mutation == "ack":
                s[ihl + 8] ^= 1
            elif mutation == "ts" and hl > ihl + 20:
                s[hl - 1] ^= 0x5A
            elif mutation == "short" and len(s) > hl + 1:
                del s[-1]
            elif mutation == "long":
                s += b"x"
            elif mutation == "id" and v == 4:
                s[5] ^= 2
            if v == 4:
                s[2:4] = struct.pack(">H", len(s))
                s[10:12] = b"\0\0"
                s[10:12] = struct.pack(">H", slow_csum(bytes(s[:20])))
            else:
                s[4:6] = struct.pack(">H", len(s) - 40)
            fix_l4_checksum(s)
            segments[i] = bytes(s)
        flows.append(segments)
    out: list[bytes | memoryview] = []
    while any(flows):
        k = draw(st.sampled_from([i for i, f in enumerate(flows) if f]))
        take = draw(st.integers(1, 60))
        out += flows[k][:take]
        flows[k] = flows[k][take:]
    views = draw(st.booleans())
    return [memoryview(p) if views else p for p in out]


def _written(items: list[tuple[bytes, offload.Buffer] | offload._Group]) -> list[tuple[bytes, bytes]]:
    return [offload._build(i) if isinstance(i, offload._Group) and len(i.payloads) > 1
            else (i.single_hdr, bytes(i.first)) if isinstance(i, offload._Group) else (i[0], bytes(i[1]))
            for i in items]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=bulk_streams())
def test_fast_path_writes_what_the_general_path_writes(stream: list[bytes | memoryview]) -> None:
    """The predicted run of _coalesce (one integer compare per segment) takes exactly the segments the general
    path would: same super-packets, same singles, in the same order."""
    fast = _written(offload._coalesce(stream, VNET_HDR_ZERO, False))
    general = _written(offload._coalesce(stream, VNET_HDR_ZERO, False, predict=False))
    assert fast == general

    def without_id(pkt: bytes) -> bytes:  # fixed IDs under DF come back running on, as from the kernel's split
        return pkt[:4] + pkt[6:10] + pkt[12:] if pkt[0] >> 4 == 4 else pkt

    def per_flow(packets: list[bytes]) -> dict[bytes, list[bytes]]:  # flows may pass each other, as in GRO
        flows: dict[bytes, list[bytes]] = {}
        for pkt in packets:
            flows.setdefault(flow_of(pkt), []).append(without_id(pkt))
        return flows

    assert per_flow([x for h, p in fast for x in split_super_packet(h, p)]) == per_flow([bytes(p) for p in stream])


@pytest.mark.parametrize(("v", "wrap"), [(4, "id"), (4, "seq"), (6, "seq")])
def test_fast_path_prediction_never_carries_into_a_neighbouring_field(v: int, wrap: str) -> None:
    """The predicted headers are one integer: were the ID (or sequence number) allowed to wrap inside it, the
    carry would land in the total length (or destination port), and a segment crafted to match that carry (a
    length that is not its own, another flow) would join the run. The fast path stops short of a wrap."""
    gso = 1000
    ihl = 20 if v == 4 else 40
    seq = 2**32 - 2 * gso if wrap == "seq" else 5000
    ip_id = 0xFFFE if wrap == "id" else 7
    vnet, sup = build_super(v, 6, bytes(4 * gso), gso, seq=seq, ip_id=ip_id, flags=TCP_ACK, options=TS_OPTION)
    segs = [bytearray(s) for s in split_super_packet(vnet, sup)]
    crafted = segs[2]  # after the wrap: ID 0 or sequence number 0
    if wrap == "id":
        crafted[3] += 1  # total length one more than the segment's length
    else:
        crafted[ihl + 3] += 1  # destination port one more: another flow
    if v == 4:
        crafted[10:12] = b"\0\0"
        crafted[10:12] = struct.pack(">H", slow_csum(bytes(crafted[:20])))
    fix_l4_checksum(crafted)
    stream = [bytes(s) for s in segs]
    fast = _written(offload._coalesce(stream, VNET_HDR_ZERO, False))
    assert fast == _written(offload._coalesce(stream, VNET_HDR_ZERO, False, predict=False))
    assert (VNET_HDR_ZERO, stream[2]) in fast  # written alone
