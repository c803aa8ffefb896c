"""TUN segmentation offload in Python: split the kernel's TSO/USO super-packets, coalesce TCP segments for
writing.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the kernel hands the TUN reader up to 64 KB TCP (or UDP)
super-packets preceded by a ``struct virtio_net_hdr``, and accepts such super-packets on write. The WireGuard
data plane must encrypt MTU-sized packets, so reads are split here (like the kernel's
``tcp_gso_segment``/``__udp_gso_segment``), and decrypted TCP segments are merged back into one super-packet
per write (like GRO): /work/shared/docs/dataplane.md measured both as the largest wins of the data plane. Why
by hand: no maintained Python library does either.

Everything here is a pure function of bytes so the tests can drive it without a kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wgpy.linux import checksum
from wgpy.linux.checksum import Buffer, ones_sum, segment_sums

# struct virtio_net_hdr (native endian): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

VNET_HDR_ZERO = bytes(VNET_HDR_LEN)
VNET_HDR_DATA_VALID = VNET_HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)

IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# The largest packet the kernel takes on a TUN write: bigger ones are accepted by write() and then silently
# lost.
MAX_SUPER_PACKET = 65535

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_TWO_U16 = struct.Struct(">HH")
_TWO_U32 = struct.Struct(">II")
_IP4_VARYING = struct.Struct(">HHHBBH")  # at offset 2: total length, ID, flags/fragment, TTL, protocol, checksum
_TCP_VARYING = struct.Struct(">IIBBHH")  # at offset 4: seq, ack, data offset, flags, window, checksum
_IP4_FIXED = struct.Struct(">BBHHHBB")  # version/IHL, TOS, total length, ID, flags/fragment, TTL, protocol
_IP6_FIXED = struct.Struct(">IHBB")  # version/class/flow label, payload length, next header, hop limit
_TCP_FIXED = struct.Struct(">IIBBH")  # at offset 4: seq, ack, data offset, flags, window


class OffloadError(ValueError):
    """A virtio_net_hdr / packet pair that cannot be split (malformed or of an unsupported GSO type)."""


def _complete_checksum(packet: Buffer, csum_start: int, csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet: the field already holds the pseudo-header sum, so sum from
    csum_start."""
    n = len(packet)
    at = csum_start + csum_offset
    if csum_start >= n or at + 2 > n:
        raise OffloadError(f"checksum offset {csum_start}+{csum_offset} outside a {n}-byte packet")
    out = bytearray(packet)
    s = ones_sum(memoryview(out)[csum_start:])
    _U16.pack_into(out, at, ~s & 0xFFFF)
    return bytes(out)


# Below this many packets, finishing checksums one by one beats numpy's fixed cost (bench/bench_offload.py).
NUMPY_FINISH_MIN = 8


def finish_checksums(items: list[tuple[bytearray, int, int]]) -> None:
    """Finish the CHECKSUM_PARTIAL checksums of several packets in place: (packet, csum_start, csum_offset),
    offsets already checked to lie inside the packet.

    A TUN reader with checksum offload gets every TCP/UDP packet that way, also the ones that are not
    super-packets (a UDP flood is all of them). With numpy and enough packets, all the sums are one
    ``np.add.reduceat`` over the regions laid end to end (each padded to a whole word), in native word order
    (see :func:`checksum.row_sums`); otherwise :func:`ones_sum` per packet.
    """
    if checksum.use_numpy and len(items) >= NUMPY_FINISH_MIN:
        np = checksum._np
        parts: list[Buffer] = []
        starts: list[int] = []
        pos = 0
        for pkt, start, _offset in items:
            starts.append(pos >> 1)
            parts.append(memoryview(pkt)[start:])
            pos += len(pkt) - start
            if pos & 1:
                parts.append(b"\0")
                pos += 1
        words = np.frombuffer(b"".join(parts), "<u2")
        sums = (np.add.reduceat(words, starts, dtype=np.uint64) % 0xFFFF * 256 % 0xFFFF).tolist()
        for (pkt, start, offset), s in zip(items, sums, strict=True):
            _U16.pack_into(pkt, start + offset, ~s & 0xFFFF)
        return
    for pkt, start, offset in items:
        _U16.pack_into(pkt, start + offset, ~ones_sum(memoryview(pkt)[start:]) & 0xFFFF)


def split_super_packet(vnet_hdr: Buffer, packet: Buffer, views: bool = False) -> list[bytes | memoryview]:
    """Turn one TUN read (virtio_net_hdr + packet) into plain IP packets with complete, correct checksums.

    GSO_NONE packets come back whole (checksum finished when NEEDS_CSUM); TCPV4/TCPV6/UDP_L4 super-packets are
    cut at gso_size with per-segment IPv4 total length / ID / header checksum or IPv6 payload length, TCP
    sequence numbers and flags (CWR on the first segment only, FIN and PSH on the last only, as
    tcp_gso_segment does), UDP lengths, and TCP/UDP checksums computed afresh. hdr_len from the kernel is not
    trusted (it can span the whole first packet on the forwarding path); the L4 header length is parsed
    instead, as wireguard-go does.

    With ``views`` the segments of a large TCP super-packet may come back as read-only memoryviews of one fresh
    buffer (never of ``packet``), which saves a copy per segment; the TUN reader asks for that.
    """
    if len(vnet_hdr) < VNET_HDR_LEN:
        raise OffloadError("short virtio_net_hdr")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(vnet_hdr)
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return [_complete_checksum(packet, csum_start, csum_offset)]
        return [bytes(packet)]

    n = len(packet)
    if n < 20:
        raise OffloadError("packet too short for an IP header")
    version = packet[0] >> 4
    l4 = csum_start
    if version == 4:
        if gso not in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4):
            raise OffloadError(f"GSO type {gso_type} on IPv4")
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or l4 != ihl:
            raise OffloadError(f"csum_start {l4} is not the IPv4 header length {ihl}")
    elif version == 6:
        if gso not in (VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4):
            raise OffloadError(f"GSO type {gso_type} on IPv6")
        if l4 < 40:
            raise OffloadError(f"csum_start {l4} inside the IPv6 header")
    else:
        raise OffloadError(f"IP version {version}")
    is_tcp = gso != VIRTIO_NET_HDR_GSO_UDP_L4
    if is_tcp:
        if n < l4 + 20:
            raise OffloadError("packet too short for a TCP header")
        thl = (packet[l4 + 12] >> 4) * 4
        if thl < 20:
            raise OffloadError(f"TCP header length {thl}")
        expected_offset = 16
    else:
        thl = 8
        expected_offset = 6
    if csum_offset != expected_offset:
        raise OffloadError(f"csum_offset {csum_offset} for GSO type {gso_type}")
    hl = l4 + thl
    if n < hl:
        raise OffloadError("packet shorter than its headers")
    if gso_size == 0:
        raise OffloadError("gso_size 0")
    payload = memoryview(packet)[hl:]
    plen = len(payload)

    hdr = bytearray(packet[:hl])
    if version == 4:
        addr_sum = int.from_bytes(hdr[12:20], "big")
        id0 = _U16.unpack_from(hdr, 4)[0]
        hdr[2:6] = b"\0\0\0\0"
        hdr[10:12] = b"\0\0"
        ip_base = ones_sum(hdr[:l4])
    else:
        addr_sum = int.from_bytes(hdr[8:40], "big")
        id0 = ip_base = 0
    # Whole super-packets of full-size TCP segments go through numpy in one piece (see _split_tcp_numpy).
    numpy_split = (
        is_tcp and checksum.use_numpy and plen >= NUMPY_SPLIT_MIN * gso_size and not (gso_size | hl) & 1
    )
    if numpy_split:
        sums: list[int] = []
        nseg = -(-plen // gso_size)
    else:
        sums = segment_sums(payload, gso_size) if plen else [0]
        nseg = len(sums)
    out: list[bytes | memoryview] = []
    append = out.append
    join = b"".join
    # One pack_into per header per segment (measured: the per-call overhead dominates these small writes).
    if version == 4:
        frag, ttl, proto = _U16.unpack_from(hdr, 6)[0], hdr[8], hdr[9]
        pack_ip4 = _IP4_VARYING.pack_into
    else:
        pack_u16 = _U16.pack_into
    v4 = version == 4
    ip_extra = l4 - 40  # IPv6 extension headers before L4, counted in the payload length

    if is_tcp:
        seq0, ack = _TWO_U32.unpack_from(hdr, l4 + 4)
        doff = hdr[l4 + 12]
        tflags = hdr[l4 + 13]
        window = _U16.unpack_from(hdr, l4 + 14)[0]
        hdr[l4 + 4 : l4 + 8] = b"\0\0\0\0"
        hdr[l4 + 12 : l4 + 14] = b"\0\0"
        hdr[l4 + 16 : l4 + 18] = b"\0\0"
        base = ones_sum(hdr[l4:hl]) + addr_sum + IPPROTO_TCP
        if nseg == 1:
            first = last = tflags
        else:
            first = tflags & ~(TCP_FIN | TCP_PSH)
            last = tflags & ~TCP_CWR
        middle = tflags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
        if numpy_split:
            return _split_tcp_numpy(
                hdr, payload, gso_size, l4, hl, v4, id0, ip_base, base, seq0, doff, first, middle, last, views
            )
        pack_tcp = _TCP_VARYING.pack_into
        tcp_at = l4 + 4
        doff_word = doff << 8
        for i, psum in enumerate(sums):
            start = i * gso_size
            seg = payload[start : start + gso_size]
            l4len = thl + len(seg)
            seq = (seq0 + start) & 0xFFFFFFFF
            f = middle if 0 < i < nseg - 1 else first if i == 0 else last
            if v4:
                tot = l4 + l4len
                ipid = (id0 + i) & 0xFFFF
                pack_ip4(hdr, 2, tot, ipid, frag, ttl, proto, ~((ip_base + tot + ipid) % 0xFFFF) & 0xFFFF)
            else:
                pack_u16(hdr, 4, ip_extra + l4len)
            total = base + (seq >> 16) + (seq & 0xFFFF) + (doff_word | f) + l4len + psum
            pack_tcp(hdr, tcp_at, seq, ack, doff, f, window, ~(total % 0xFFFF) & 0xFFFF)
            append(join((hdr, seg)))
    else:
        hdr[l4 + 4 : l4 + 8] = b"\0\0\0\0"
        base = ones_sum(hdr[l4 : l4 + 4]) + addr_sum + IPPROTO_UDP
        pack_two = _TWO_U16.pack_into
        udp_at = l4 + 4
        for i, psum in enumerate(sums):
            start = i * gso_size
            seg = payload[start : start + gso_size]
            ulen = 8 + len(seg)
            if v4:
                tot = l4 + ulen
                ipid = (id0 + i) & 0xFFFF
                pack_ip4(hdr, 2, tot, ipid, frag, ttl, proto, ~((ip_base + tot + ipid) % 0xFFFF) & 0xFFFF)
            else:
                pack_u16(hdr, 4, ip_extra + ulen)
            pack_two(hdr, udp_at, ulen, ~((base + 2 * ulen + psum) % 0xFFFF) & 0xFFFF)
            append(join((hdr, seg)))
    return out


# Below this many segments the numpy split's fixed cost (about 20 array operations) outweighs its per-segment
# saving (bench/bench_offload.py).
NUMPY_SPLIT_MIN = 4
_INDEX: dict[int, Any] = {}  # segment count -> arange, reused


def _split_tcp_numpy(
    hdr: bytearray, payload: memoryview, gso_size: int, l4: int, hl: int, v4: bool, id0: int, ip_base: int,
    base: int, seq0: int, doff: int, first: int, middle: int, last: int, views: bool,
) -> list[bytes | memoryview]:
    """The TCP split of :func:`split_super_packet` done with whole-array operations: every segment is laid out
    in one fresh buffer (header template broadcast, payload copied in one go), and the varying fields (IPv4 ID
    and header checksum, TCP sequence number and checksum) are computed for all full-size segments at once.
    Returns memoryviews of that buffer, one per segment. The first and last segments (their own TCP flags)
    and a short tail segment are finished one at a time.

    Measured (bench/bench_offload.py, 48 × 1368-byte segments): about half the per-segment cost of the
    per-segment loop with numpy checksums.
    """
    np = checksum._np
    plen = len(payload)
    full = plen // gso_size
    rest = plen - full * gso_size
    stride = hl + gso_size
    l4len = hl - l4 + gso_size
    doff_word = doff << 8
    tmpl = hdr  # variable fields are zero; fill in what every full-size segment shares
    if v4:
        tot = l4 + l4len
        _U16.pack_into(tmpl, 2, tot)
    else:
        tot = 0
        _U16.pack_into(tmpl, 4, l4 - 40 + l4len)
    tmpl[l4 + 12] = doff
    tmpl[l4 + 13] = middle
    buf = np.empty(full * stride + (hl + rest if rest else 0), np.uint8)
    rows = buf[: full * stride].reshape(full, stride)
    rows[:, :hl] = np.frombuffer(tmpl, np.uint8)
    body = full * gso_size
    rows[:, hl:] = np.frombuffer(payload, np.uint8, count=body).reshape(full, gso_size)
    # Sums as native words (see checksum.row_sums); the big-endian sum is 256 times that, mod 0xffff. A 32-bit
    # sequence number is congruent to the sum of its two 16-bit halves (2**16 ≡ 1), so it is added whole.
    raw = checksum.row_sums(rows[:, hl:], native=True)
    index = _INDEX.get(full)
    if index is None:
        index = _INDEX[full] = np.arange(full, dtype=np.uint64)
    seq = index * gso_size
    seq += seq0
    seq &= 0xFFFFFFFF
    rows[:, l4 + 4 : l4 + 8].view(">u4")[:, 0] = seq
    tcp = raw * 256
    tcp += seq
    tcp += (base + (doff_word | middle) + l4len) % 0xFFFF
    tcp %= 0xFFFF
    rows[:, l4 + 16 : l4 + 18].view(">u2")[:, 0] = 0xFFFF - tcp
    if v4:
        ids = index + id0
        ids &= 0xFFFF
        rows[:, 4:6].view(">u2")[:, 0] = ids
        ids += (ip_base + tot) % 0xFFFF
        ids %= 0xFFFF
        rows[:, 10:12].view(">u2")[:, 0] = 0xFFFF - ids
    mv = memoryview(buf)
    # The first segment, and the last if it is full-size, carry their own flags: redo their TCP checksum.
    for row, f in ((0, first), (full - 1, last)) if not rest else ((0, first),):
        if f == middle:
            continue
        at = row * stride + l4
        buf[at + 13] = f
        s = (seq0 + row * gso_size) & 0xFFFFFFFF
        total = base + (s >> 16) + (s & 0xFFFF) + (doff_word | f) + l4len + int(raw[row]) * 256
        _U16.pack_into(mv, at + 16, ~(total % 0xFFFF) & 0xFFFF)
    if rest:
        at = full * stride
        seg = payload[body:]
        l4len = hl - l4 + rest
        s = (seq0 + body) & 0xFFFFFFFF
        if v4:
            tot = l4 + l4len
            ipid = (id0 + full) & 0xFFFF
            _IP4_VARYING.pack_into(tmpl, 2, tot, ipid, _U16.unpack_from(tmpl, 6)[0], tmpl[8], tmpl[9],
                                   ~((ip_base + tot + ipid) % 0xFFFF) & 0xFFFF)
        else:
            _U16.pack_into(tmpl, 4, l4 - 40 + l4len)
        total = base + (s >> 16) + (s & 0xFFFF) + (doff_word | last) + l4len + ones_sum(seg)
        ack, window = _U32.unpack_from(tmpl, l4 + 8)[0], _U16.unpack_from(tmpl, l4 + 14)[0]
        _TCP_VARYING.pack_into(tmpl, l4 + 4, s, ack, doff, last, window, ~(total % 0xFFFF) & 0xFFFF)
        mv[at : at + hl] = tmpl
        mv[at + hl :] = seg
    # Callers get bytes (they slice and hash packets freely), one copy of the whole then one slice each, or
    # read-only views of the buffer when they asked for them.
    whole: bytes | memoryview = mv.toreadonly() if views else buf.tobytes()
    out: list[bytes | memoryview] = [whole[k : k + stride] for k in range(0, full * stride, stride)]
    if rest:
        out.append(whole[full * stride :])
    return out


@dataclass(slots=True)
class _Group:
    """An open run of TCP segments (or UDP datagrams) of one flow that can become one super-packet."""

    first: bytes
    ihl: int
    thl: int  # L4 header length: the TCP header with options, or 8 for UDP
    version: int
    udp: bool
    sig: tuple[tuple[int, int, int], int, int, bytes]
    gso_size: int
    next_seq: int
    length: int
    # Copies, not views: slicing bytes costs less than a memoryview and its slice (0.10 against 0.15 µs).
    payloads: list[Buffer] = field(default_factory=list)
    psh: bool = False
    closed: bool = False
    ip_id: int = 0  # IPv4 ID of the first packet
    id_step: int = -1  # 1: IDs increment per packet; 0: one fixed ID (DF only); -1: not known yet
    single_hdr: bytes = VNET_HDR_ZERO  # the header to write the first packet with if nothing joins it


def _id_fits(g: _Group, ip_id: int, df: int) -> bool:
    """IPv4 IDs must run on by one per packet, or stay fixed when DF is set, as GRO (inet_gro_receive)
    demands: then the kernel's resegmentation restores them."""
    count = len(g.payloads)
    if g.id_step != 0 and ip_id == (g.ip_id + count) & 0xFFFF:
        g.id_step = 1
        return True
    if g.id_step != 1 and df and ip_id == g.ip_id:
        g.id_step = 0
        return True
    return False


def _build(group: _Group) -> tuple[bytes, bytes]:
    """The super-packet of a group of ≥ 2 segments, with the virtio_net_hdr the kernel needs to accept it."""
    vnet, hdr = _group_headers(group)
    return vnet, b"".join((hdr, *group.payloads))


def _group_headers(group: _Group) -> tuple[bytes, bytearray]:
    """The virtio_net_hdr and the IP + L4 headers of a group's super-packet (its payloads follow them)."""
    ihl, thl = group.ihl, group.thl
    hl = ihl + thl
    hdr = bytearray(group.first[:hl])
    total = group.length
    l4len = total - ihl
    if group.version == 4:
        _U16.pack_into(hdr, 2, total)
        hdr[10:12] = b"\0\0"
        _U16.pack_into(hdr, 10, ~ones_sum(hdr[:ihl]) & 0xFFFF)
        addr_sum = int.from_bytes(hdr[12:20], "big")
    else:
        _U16.pack_into(hdr, 4, total - 40)
        addr_sum = int.from_bytes(hdr[8:40], "big")
    # CHECKSUM_PARTIAL: the pseudo-header sum, not inverted; the kernel finishes it (or trusts it, as here).
    if group.udp:
        _U16.pack_into(hdr, ihl + 4, l4len)  # the kernel rewrites the length of each segment from this one
        _U16.pack_into(hdr, ihl + 6, (addr_sum + IPPROTO_UDP + l4len) % 0xFFFF)
        vnet = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, hl, group.gso_size, ihl, 6)
    else:
        if group.psh:
            hdr[ihl + 13] |= TCP_PSH
        _U16.pack_into(hdr, ihl + 16, (addr_sum + IPPROTO_TCP + l4len) % 0xFFFF)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if group.version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
        vnet = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hl, group.gso_size, ihl, 16)
    return vnet, hdr


# Datagrams per UDP super-packet: the kernel's UDP_MAX_SEGMENTS for GSO.
MAX_UDP_SEGMENTS = 128


def coalesce(
    packets: Iterable[Buffer], data_valid: bool = False, udp: bool = False
) -> list[tuple[bytes, Buffer]]:
    """Merge consecutive TCP segments of one flow into super-packets for one TUN write each (GRO in Python).

    TCP segments merge when they share the flow (addresses, ports), the IP fields GRO compares (IPv4 TOS, TTL,
    DF; IPv6 traffic class/flow label and hop limit), acknowledgement number, window and TCP options byte for
    byte, carry only ACK (PSH allowed on the last), have contiguous sequence numbers and payloads of the first
    segment's size (the last may be shorter), IPv4 IDs that run on by one (or stay fixed under DF), and the
    result stays within 64 KB. IPv4 with options or fragments and IPv6 with extension headers are never
    merged. A packet that cannot join closes its flow's open run, so the order of packets within a flow is
    kept; different flows may be reordered relative to each other, as GRO does. The inner checksums are
    trusted (the packets were authenticated), as kernel WireGuard does.

    With ``udp`` (the TUN accepted USO4|USO6), UDP datagrams of one flow with equal payload sizes (the last
    may be shorter) and a non-zero checksum merge the same way into UDP_L4 super-packets of at most 128
    datagrams.

    Returns (virtio_net_hdr, packet) pairs: GSO super-packets, and single packets with a zero header (or
    DATA_VALID when ``data_valid``: the kernel then skips verifying their checksums).
    """
    result: list[tuple[bytes, Buffer]] = []
    for item in _coalesce(packets, VNET_HDR_DATA_VALID if data_valid else VNET_HDR_ZERO, udp):
        if isinstance(item, _Group):
            if len(item.payloads) == 1:
                result.append((item.single_hdr, item.first))
            else:
                result.append(_build(item))
        else:
            result.append(item)
    return result


def coalesce_iov(
    packets: Iterable[Buffer], data_valid: bool = False, udp: bool = False
) -> list[tuple[tuple[Buffer, ...], int]]:
    """:func:`coalesce` for a writer: (buffers for one ``writev``, packet count) pairs. A super-packet's header
    and payloads go out as separate buffers (the kernel gathers them), which saves joining 64 KB per write."""
    result: list[tuple[tuple[Buffer, ...], int]] = []
    for item in _coalesce(packets, VNET_HDR_DATA_VALID if data_valid else VNET_HDR_ZERO, udp):
        if isinstance(item, _Group):
            count = len(item.payloads)
            if count == 1:
                result.append(((item.single_hdr, item.first), 1))
            else:
                vnet, hdr = _group_headers(item)
                result.append(((vnet, hdr, *item.payloads), count))
        else:
            result.append((item, 1))
    return result


def _coalesce(
    packets: Iterable[Buffer], single_hdr: bytes, udp: bool, predict: bool = True
) -> list[tuple[bytes, Buffer] | _Group]:
    """The grouping behind :func:`coalesce`: single packets with their header, and groups. Without ``predict``
    every packet takes the general path (the tests hold the fast path to it)."""
    out: list[tuple[bytes, Buffer] | _Group] = []
    open_groups: dict[bytes, _Group] = {}
    # The predicted run (the fast path): the open TCP group the previous packet went last into, and the
    # headers its next full-size segment must have, as one integer with the checksums masked out (the IPv4 ID
    # one more, the sequence number one payload further, everything else the same). A segment that continues the
    # run costs one slice, one int.from_bytes and one compare; anything else takes the general path below,
    # which makes the same decision the long way. `run_left` is -1 until the next packet shows the same flow
    # (so interleaved flows do not pay for setting up runs), then counts the segments the run can still take
    # without a field wrapping (which the general path handles) or the super-packet outgrowing 64 KB.
    run: _Group | None = None
    run_prev: Buffer = b""
    run_left = run_n = run_hl = run_mask = run_delta = run_expected = run_taken = 0
    no_run: list[Buffer] = []
    run_append = no_run.append  # the run's payloads.append, once there is a run
    from_bytes = int.from_bytes
    ip4_unpack = _IP4_FIXED.unpack_from
    ip6_unpack = _IP6_FIXED.unpack_from
    tcp_unpack = _TCP_FIXED.unpack_from
    udp_unpack = _TWO_U16.unpack_from
    for p in packets:
        if run is not None:
            if run_left < 0:
                predicted = _predict(run, run_prev) if p[12:24] == run_prev[12:24] else None
                if predicted is not None:
                    run_left, run_n, run_hl, run_mask, run_delta, run_expected = predicted
                    run_append = run.payloads.append
                    run_taken = 0
            if run_left > 0 and len(p) == run_n and from_bytes(p[:run_hl], "big") & run_mask == run_expected:
                run_append(p[run_hl:])
                run_expected += run_delta
                run_left -= 1
                run_taken += 1
                continue
            if run_taken:
                _settle(run, run_taken)
                run_taken = 0
            run = None
        n = len(p)
        if n < 28:
            out.append((single_hdr, p))
            continue
        first_byte = p[0]
        if first_byte == 0x45:  # IPv4 without options
            _v, tos, tot, ip_id, frag, ttl, proto = ip4_unpack(p)
            if frag & 0x3FFF or tot != n or not (proto == IPPROTO_TCP or (udp and proto == IPPROTO_UDP)):
                out.append((single_hdr, p))
                continue
            ihl = 20
            ipsig: tuple[int, int, int] = (tos, frag & 0x4000, ttl)
        elif first_byte >> 4 == 6 and n >= 48:
            vtcfl, plen6, proto, hop = ip6_unpack(p)
            if plen6 + 40 != n or not (proto == IPPROTO_TCP or (udp and proto == IPPROTO_UDP)):
                out.append((single_hdr, p))
                continue
            ihl = 40
            ipsig = (vtcfl, hop, 0)
            ip_id = 0
        else:
            out.append((single_hdr, p))
            continue
        if type(p) is not bytes:
            p = bytes(p)
        key = p[12:24] if ihl == 20 else p[8:44]  # addresses and ports
        if proto == IPPROTO_UDP:
            key += b"u"  # never the same run as a TCP flow on the same ports
            ulen, ucsum = udp_unpack(p, ihl + 4)
            plen = n - ihl - 8
            g = open_groups.get(key)
            if ulen != n - ihl or ucsum == 0 or plen <= 0:
                if g is not None:
                    g.closed = True
                out.append((single_hdr, p))
                continue
            if g is not None:
                if (
                    not g.closed
                    and g.udp
                    and g.sig[0] == ipsig
                    and plen <= g.gso_size
                    and g.length + plen <= MAX_SUPER_PACKET
                    and len(g.payloads) < MAX_UDP_SEGMENTS
                    and (ihl == 40 or _id_fits(g, ip_id, ipsig[1]))
                ):
                    g.payloads.append(p[ihl + 8 :])
                    g.length += plen
                    if plen < g.gso_size:
                        g.closed = True
                    continue
                g.closed = True
            g = _Group(
                first=p, ihl=ihl, thl=8, version=4 if ihl == 20 else 6, udp=True, sig=(ipsig, 0, 0, b""),
                gso_size=plen, next_seq=0, length=n, payloads=[p[ihl + 8 :]], ip_id=ip_id,
                single_hdr=single_hdr,
            )
            open_groups[key] = g
            out.append(g)
            continue
        if n < ihl + 20:
            out.append((single_hdr, p))
            continue
        seq, ack, doff, tflags, window = tcp_unpack(p, ihl + 4)
        thl = (doff >> 4) * 4
        hl = ihl + thl
        plen = n - hl
        if thl < 20 or plen <= 0 or tflags & ~TCP_PSH != TCP_ACK:
            # SYN/FIN/RST/URG/ECE/CWR, pure ACKs, bad header lengths: written alone, and they end the flow's
            # run.
            g = open_groups.pop(key, None)
            if g is not None:
                g.closed = True
            out.append((single_hdr, p))
            continue
        sig = (ipsig, ack, window, p[ihl + 20 : hl] if thl > 20 else b"")
        psh = tflags & TCP_PSH
        g = open_groups.get(key)
        if g is not None:
            if (
                not g.closed
                and g.next_seq == seq
                and g.sig == sig
                and g.thl == thl
                and not g.udp
                and plen <= g.gso_size
                and g.length + plen <= MAX_SUPER_PACKET
                and (ihl == 40 or _id_fits(g, ip_id, ipsig[1]))
            ):
                g.payloads.append(p[hl:])
                g.length += plen
                g.next_seq = (seq + plen) & 0xFFFFFFFF
                if psh or plen < g.gso_size:
                    g.psh = bool(psh)
                    g.closed = True
                elif predict:
                    run, run_prev, run_left = g, p, -1
                continue
            g.closed = True
        g = _Group(
            first=p, ihl=ihl, thl=thl, version=4 if ihl == 20 else 6, udp=False, sig=sig, gso_size=plen,
            next_seq=(seq + plen) & 0xFFFFFFFF, length=n, payloads=[p[hl:]], psh=bool(psh),
            closed=bool(psh), ip_id=ip_id, single_hdr=single_hdr,
        )
        open_groups[key] = g
        out.append(g)
        if predict and not psh:
            run, run_prev, run_left = g, p, -1
    if run_taken:
        _settle(run, run_taken)  # type: ignore[arg-type]
    return out


def _settle(g: _Group, taken: int) -> None:
    """Book the segments a predicted run appended to ``g`` (kept out of the per-segment step)."""
    added = taken * g.gso_size
    g.length += added
    g.next_seq = (g.next_seq + added) & 0xFFFFFFFF
    g.id_step = 1


def _predict(g: _Group, last: Buffer) -> tuple[int, int, int, int, int, int] | None:
    """Set up the predicted run of :func:`_coalesce` after ``last``, a full-size TCP segment that went last into
    the open group ``g``: (segments the run may take, their length, header length, mask, per-segment increment,
    expected masked headers of the next one), or None if no segment can continue it the fast way (only ACK set,
    IPv4 IDs running on by one, room left in 64 KB).
    """
    ihl = g.ihl
    hl = ihl + g.thl
    plen = g.gso_size
    n = len(last)
    if g.closed or g.udp or last[ihl + 13] != TCP_ACK or n - hl != plen or hl > ihl + 60:
        return None
    seq = _U32.unpack_from(last, ihl + 4)[0]
    left = min((MAX_SUPER_PACKET - g.length) // plen, (0xFFFFFFFF - seq) // plen)
    delta = plen << (hl - ihl - 8) * 8  # the sequence number, bytes 4-7 of the TCP header
    if ihl == 20:
        if g.id_step == 0:
            return None
        left = min(left, 0xFFFF - _U16.unpack_from(last, 4)[0])
        delta += 1 << (hl - 6) * 8  # the ID, bytes 4-5
    if left <= 0:
        return None
    mask = _RUN_MASKS[ihl, hl]
    return left, n, hl, mask, delta, (int.from_bytes(last[:hl], "big") & mask) + delta


# The header bytes that a continuing segment repeats or predictably changes, as big-endian masks per IP and
# TCP header length: all but the IPv4 header checksum (bytes 10-11) and the TCP checksum.
_RUN_MASKS = {
    (ihl, hl): int.from_bytes(
        (b"\xff" * 10 + b"\0\0" + b"\xff" * 8 if ihl == 20 else b"\xff" * 40)
        + b"\xff" * 16 + b"\0\0" + b"\xff" * (hl - ihl - 18), "big"
    )
    for ihl in (20, 40)
    for hl in range(ihl + 20, ihl + 61, 4)
}
