"""The TUN device: batched, non-blocking reads and writes of IP packets, with segmentation offload when
possible.

Opened like wireguard-go's tun_linux.go: /dev/net/tun, IFF_TUN | IFF_NO_PI (| IFF_VNET_HDR), non-blocking, MTU
set with SIOCSIFMTU, and the link left down (wg-quick / ip brings it up; wireguard-go never does). With the
vnet header on, TUNSETOFFLOAD CSUM|TSO4|TSO6 (plus USO4|USO6 when the kernel takes them, Linux ≥ 6.2) makes
the kernel hand over 64 KB super-packets, which read_packets splits; write_packets coalesces TCP (and UDP) back
into super-packets. The numbers behind that choice are in /work/shared/docs/dataplane.md.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from wgpy.linux.checksum import Buffer
from wgpy.linux.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VNET_HDR_DATA_VALID,
    VNET_HDR_LEN,
    VNET_HDR_ZERO,
    OffloadError,
    coalesce_iov,
    finish_checksums,
    split_super_packet,
)

TUN_CLONE_DEVICE = "/dev/net/tun"

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TCP_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
UDP_OFFLOADS = TUN_F_USO4 | TUN_F_USO6  # EINVAL for either alone

IFNAMSIZ = 16
_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, padding to 40 bytes
_IFREQ_INT = struct.Struct("16si20x")  # struct ifreq: name, ifr_mtu
_CSUM_FIELDS = struct.Struct("=HH")  # csum_start, csum_offset of the virtio_net_hdr, at offset 6

# The largest read: a 64 KB super-packet plus its virtio_net_hdr.
READ_BUFFER = 65535 + VNET_HDR_LEN

# errno values that mean the device is gone (deleted with `ip link del`) rather than a passing error.
_GONE = (errno.EBADFD, errno.ENODEV, errno.ENXIO)


class TunGoneError(OSError):
    """The TUN device behind the file descriptor no longer exists (``ip link del``); the fd is useless now."""


@dataclass
class TunStats:
    """Counters for the data plane's own health, never raised as errors: one bad packet must not end a batch."""

    reads: int = 0  # read() calls that returned a packet
    super_packets_read: int = 0  # reads that were GSO super-packets
    packets_read: int = 0  # plain IP packets handed out (after splitting)
    read_errors: int = 0  # malformed reads dropped (bad virtio_net_hdr, unsplittable) or EIO
    writes: int = 0  # successful write() calls
    super_packets_written: int = 0
    packets_written: int = 0  # IP packets the kernel accepted (segments of super-packets count one each)
    write_errors: int = 0  # IP packets lost to a failed write (EINVAL, EIO, ...)


def _ifname(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


class Tun:
    """One TUN device. ``fd`` is non-blocking; register it with epoll and call :meth:`read_packets` when
    readable.

    ``offload`` says whether the vnet header and TSO are on (reads may be super-packets, writes are
    coalesced). A TUN fd adopted with IFF_VNET_HDR but ``offload=False`` keeps the (all-zero) header with no
    offloads on.
    """

    def __init__(self, fd: int, name: str, vnet_hdr: bool, offload_flags: int) -> None:
        self.fd = fd
        self._name = name
        self.vnet_hdr = vnet_hdr
        self.offload_flags = offload_flags
        self.offload = vnet_hdr and bool(offload_flags & TUN_F_TSO4)
        self.uso = bool(offload_flags & TUN_F_USO4)
        # Kernel WireGuard marks decrypted packets CHECKSUM_UNNECESSARY: authentication already covers them.
        self.data_valid = True
        self.stats = TunStats()
        # MTU ioctls go through a socket of the namespace the device was opened in, so they keep working when
        # the caller's thread is elsewhere (a device opened inside in_netns()).
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._rbuf = bytearray(READ_BUFFER)
        self._rmv = memoryview(self._rbuf)
        self._closed = False

    # -- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, mtu: int = 1420, offload: bool = True) -> Tun:
        """Create (or attach to a persistent) TUN device ``name`` and set its MTU; the link stays down.

        With ``offload`` the vnet header and TSO (and USO when accepted) are switched on; if the kernel
        refuses any of that, the device is reopened without the vnet header (the plain path), never
        half-configured.
        """
        if len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
        tun: Tun | None = None
        if offload:
            fd = cls._open(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
            if fd is not None:
                flags = cls._enable_offloads(fd)
                if flags:
                    tun = cls(fd, cls._query_name(fd), True, flags)
                else:
                    os.close(fd)
        if tun is None:
            fd = cls._open(name, IFF_TUN | IFF_NO_PI, strict=True)
            assert fd is not None
            tun = cls(fd, cls._query_name(fd), False, 0)
        try:
            tun.mtu = mtu
        except BaseException:
            tun.close()
            raise
        return tun

    @classmethod
    def adopt(cls, fd: int, offload: bool = True) -> Tun:
        """Take over an already-open TUN fd (wireguard-go's WG_TUN_FD): name from TUNGETIFF, made
        non-blocking.

        The vnet header cannot be switched after TUNSETIFF, so it is used if the fd has it: offloads are
        enabled on it when ``offload`` (and accepted), otherwise turned off so that reads carry no
        super-packets.
        """
        raw = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ_FLAGS.size))
        name_raw, ifflags = _IFREQ_FLAGS.unpack(raw)
        if not ifflags & IFF_TUN or not ifflags & IFF_NO_PI:
            raise ValueError(f"fd {fd} is not an IFF_TUN | IFF_NO_PI device (flags {ifflags:#x})")
        os.set_blocking(fd, False)
        vnet = bool(ifflags & IFF_VNET_HDR)
        flags = 0
        if vnet:
            flags = cls._enable_offloads(fd) if offload else 0
            if not flags:
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        return cls(fd, _ifname(name_raw), vnet, flags)

    @staticmethod
    def _open(name: str, flags: int, strict: bool = False) -> int | None:
        fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(name.encode(), flags))
            os.set_blocking(fd, False)
        except OSError:
            os.close(fd)
            if strict:
                raise
            return None
        return fd

    @staticmethod
    def _enable_offloads(fd: int) -> int:
        """The richest offload set the kernel accepts, 0 if none. Only call with IFF_VNET_HDR on (the kernel
        accepts TUNSETOFFLOAD without it, and then nothing works)."""
        for flags in (TCP_OFFLOADS | UDP_OFFLOADS, TCP_OFFLOADS):
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
                return flags
            except OSError:
                continue
        return 0

    @staticmethod
    def _query_name(fd: int) -> str:
        raw = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ_FLAGS.size))
        return _ifname(_IFREQ_FLAGS.unpack(raw)[0])

    # -- properties ------------------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.fd

    @property
    def name(self) -> str:
        """The current interface name (re-read, since `ip link set NAME name OTHER` renames it under us)."""
        if not self._closed:
            try:
                self._name = self._query_name(self.fd)
            except OSError:
                pass
        return self._name

    @property
    def mtu(self) -> int:
        """The MTU as the kernel has it now (SIOCGIFMTU), e.g. after `ip link set mtu`."""
        raw = fcntl.ioctl(self._ctl.fileno(), SIOCGIFMTU, _IFREQ_INT.pack(self.name.encode(), 0))
        return int(_IFREQ_INT.unpack(raw)[1])

    @mtu.setter
    def mtu(self, value: int) -> None:
        fcntl.ioctl(self._ctl.fileno(), SIOCSIFMTU, _IFREQ_INT.pack(self.name.encode(), value))

    def exists(self) -> bool:
        """Whether the device is still there: TUNGETIFF on our fd fails with EBADFD once it was deleted."""
        if self._closed:
            return False
        try:
            fcntl.ioctl(self.fd, TUNGETIFF, bytes(_IFREQ_FLAGS.size))
        except OSError:
            return False
        return True

    # -- data ------------------------------------------------------------------------------------------------

    def read_packets(self, max_packets: int = 256) -> list[bytes | memoryview]:
        """Drain the device until EAGAIN or until at least ``max_packets`` packets were collected.

        One read can yield a whole super-packet (up to ~48 segments), so the result may exceed ``max_packets``
        by less than one super-packet. Every packet returned is a plain IP packet with complete checksums.
        Malformed reads are dropped and counted; a deleted device raises :class:`TunGoneError`.
        """
        out: list[bytes | memoryview] = []
        fd, buf, mv = self.fd, self._rbuf, self._rmv
        readv = os.readv
        vnet = self.vnet_hdr
        stats = self.stats
        partial: list[tuple[bytearray, int, int]] = []  # single packets whose checksum is left to us
        while len(out) < max_packets:
            try:
                n = readv(fd, [buf])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in _GONE:
                    raise TunGoneError(e.errno, f"TUN device {self._name} is gone") from None
                stats.read_errors += 1
                break
            stats.reads += 1
            if not vnet:
                if n:
                    out.append(bytes(mv[:n]))
                continue
            if n <= VNET_HDR_LEN:
                stats.read_errors += 1
                continue
            if buf[1] == 0:
                if not buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                    out.append(bytes(mv[VNET_HDR_LEN:n]))
                    continue
                # Not a super-packet, but its checksum is only the pseudo-header sum: finished below, together.
                start, offset = _CSUM_FIELDS.unpack_from(buf, 6)
                size = n - VNET_HDR_LEN
                if start >= size or start + offset + 2 > size:
                    stats.read_errors += 1
                    continue
                pkt = bytearray(mv[VNET_HDR_LEN:n])
                partial.append((pkt, start, offset))
                out.append(memoryview(pkt))
                continue
            try:
                segments = split_super_packet(mv[:VNET_HDR_LEN], mv[VNET_HDR_LEN:n], views=True)
            except OffloadError:
                stats.read_errors += 1
                continue
            if buf[1]:
                stats.super_packets_read += 1
            out.extend(segments)
        if partial:
            finish_checksums(partial)
        stats.packets_read += len(out)
        return out

    def write_packets(self, packets: Sequence[Buffer]) -> int:
        """Hand decrypted IP packets to the kernel; returns how many it accepted (counting segments).

        With offload, TCP runs (and UDP runs when the kernel took USO) are coalesced into GSO super-packets
        (checksums trusted, as the packets were authenticated); everything else goes one packet per write. A
        failed write (EINVAL, EIO, ...) is counted and the batch goes on; only a deleted device raises
        :class:`TunGoneError`.
        """
        fd = self.fd
        stats = self.stats
        accepted = 0
        if self.offload and len(packets) > 1:
            writev = os.writev
            for iov, count in coalesce_iov(packets, data_valid=self.data_valid, udp=self.uso):
                try:
                    writev(fd, iov)
                except OSError as e:
                    if e.errno in _GONE:
                        raise TunGoneError(e.errno, f"TUN device {self._name} is gone") from None
                    stats.write_errors += count
                    continue
                stats.writes += 1
                if count > 1:
                    stats.super_packets_written += 1
                accepted += count
        else:
            # One write per packet: the plain path, and a lone packet with offload, which has nothing to merge
            # with. Skipping the coalescer for it saves 35 of the 50 µs that coalesce_iov takes for one packet
            # with cold caches: on an idle tunnel, every ping's echo and reply pay that.
            if not self.vnet_hdr:
                prefix = None
            elif self.offload and self.data_valid:
                prefix = VNET_HDR_DATA_VALID
            else:
                prefix = VNET_HDR_ZERO
            for pkt in packets:
                try:
                    if prefix is None:
                        os.write(fd, pkt)
                    else:
                        os.writev(fd, (prefix, pkt))
                except OSError as e:
                    if e.errno in _GONE:
                        raise TunGoneError(e.errno, f"TUN device {self._name} is gone") from None
                    stats.write_errors += 1
                    continue
                stats.writes += 1
                accepted += 1
        stats.packets_written += accepted
        return accepted

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.close(self.fd)
        finally:
            self._ctl.close()

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tun(name={self._name!r}, fd={self.fd}, offload={self.offload}, uso={self.uso})"
