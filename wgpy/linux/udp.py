"""The UDP side of the data plane: one IPv4 and one IPv6 socket on the same port, batched with GSO and GRO.

Two sockets rather than one dual-stack socket, as wireguard-go's StdNetBind does: IPv6 can be absent or
disabled (the IPv4 socket still works), there are no v4-mapped addresses to translate on every datagram, and
IP_PKTINFO / IPV6_PKTINFO each stay on their own family. Sending uses UDP_SEGMENT (GSO, one sendmsg per ≤ 64
KB run of equal-size datagrams) and receiving UDP_GRO (one recvmsg per run, split on the gso_size control
message): per /work/shared/docs/dataplane.md that is 0.35 and 0.14 µs per datagram instead of 4.2 and 1.15.

Sticky source: every receive records the local address the peer wrote to (IP_PKTINFO / IPV6_RECVPKTINFO), and
replies to that endpoint carry it as the source in a PKTINFO control message, so a host with several addresses
answers from the one it was reached at, like kernel WireGuard.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from wgpy.linux.checksum import Buffer

Endpoint = tuple[str, int]

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_MARK = 36
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50

SOCKET_BUFFER = 8 << 20
MAX_GSO_BYTES = 65507  # UDP payload per sendmsg (EMSGSIZE beyond)
MAX_GSO_SEGMENTS = 128  # segments per sendmsg (EINVAL beyond)
RECV_BUFFER = 65536 + 64
MAX_STICKY_SOURCES = 4096  # bound on remembered (endpoint -> local address) pairs: sources are peer-chosen

_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_INT.size) + 64

# Send errors that mean this object is broken (closed socket): raised. Everything else (ECONNREFUSED,
# ENETUNREACH, EAGAIN, ENOBUFS, EPERM from a firewall, ...) concerns one destination or a passing condition
# and is counted.
_FATAL_SEND_ERRORS = frozenset({errno.EBADF, errno.ENOTSOCK})
# What sendmsg says when the remembered source address is no longer ours (ENETUNREACH on 6.18 for IPv4): the
# source is forgotten and the send retried once without it.
_SOURCE_GONE = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH})


@dataclass
class UdpStats:
    datagrams_sent: int = 0
    gso_sends: int = 0  # sendmsg calls that carried several datagrams
    datagrams_received: int = 0
    gro_batches: int = 0  # recvmsg calls that returned several datagrams
    send_errors: dict[int, int] = field(default_factory=dict)  # errno -> datagrams lost
    recv_errors: dict[int, int] = field(default_factory=dict)  # errno -> failed recvmsg calls
    gso_fallbacks: int = 0  # GSO sends the kernel refused, redone one datagram at a time
    sticky_source_resets: int = 0  # a remembered source address stopped working and was forgotten


def canonical_host(host: str) -> str:
    """IPv4 dotted quad, IPv6 compressed without brackets or zone, v4-mapped IPv6 turned into IPv4."""
    host = host.strip("[]").split("%", 1)[0]
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _set_buffers(sock: socket.socket) -> None:
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:  # not root (no CAP_NET_ADMIN): the sysctl limit caps this one
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


class UdpSocket:
    """The pair of UDP sockets a WireGuard device listens on. ``offload=False`` forces the plain path (no GSO,
    no GRO), for tests and for kernels that misbehave."""

    def __init__(self, port: int = 0, fwmark: int = 0, offload: bool = True) -> None:
        self.fwmark = fwmark
        self.offload = offload
        self.stats = UdpStats()
        self.gso = False
        self.gro = False
        # endpoint -> (family, local address, ifindex) of the last datagram it sent us
        self._sources: dict[Endpoint, tuple[int, bytes, int]] = {}
        self._v4: socket.socket | None = None
        self._v6: socket.socket | None = None
        self._by_fd: dict[int, socket.socket] = {}
        self.port = 0
        self._open(port)

    # -- sockets ---------------------------------------------------------------------------------------------

    def _make(self, family: int, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                sock.bind(("::", port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.bind(("0.0.0.0", port))
            _set_buffers(sock)
            if self.fwmark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.fwmark)
        except BaseException:
            sock.close()
            raise
        return sock

    def _probe_offloads(self, sock: socket.socket) -> tuple[bool, bool]:
        if not self.offload:
            return False, False
        gso = gro = True
        try:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # 0 = no default segmentation; errors if unknown
        except OSError:
            gso = False
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            gro = False
        return gso, gro

    def _open(self, port: int) -> None:
        """Bind both families to one port; with port 0 the IPv4 socket picks it and IPv6 follows (retried when
        that port is taken for IPv6, as wireguard-go does). A host without IPv6 gets an IPv4-only pair."""
        last: OSError | None = None
        for _attempt in range(100 if port == 0 else 1):
            v4 = self._make(socket.AF_INET, port)
            chosen = v4.getsockname()[1]
            try:
                v6: socket.socket | None = self._make(socket.AF_INET6, chosen)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    v4.close()
                    last = e
                    continue
                if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    v4.close()
                    raise
                v6 = None
            self._install(v4, v6, chosen)
            return
        assert last is not None
        raise last

    def _install(self, v4: socket.socket, v6: socket.socket | None, port: int) -> None:
        gso, gro = self._probe_offloads(v4)
        if v6 is not None:
            gso6, gro6 = self._probe_offloads(v6)
            gso, gro = gso and gso6, gro and gro6
        self.gso, self.gro = gso, gro
        self._v4, self._v6 = v4, v6
        self._by_fd = {s.fileno(): s for s in (v4, v6) if s is not None}
        self.port = port

    def fileno(self) -> list[int]:
        """The file descriptors to watch for reading (IPv4 first)."""
        return list(self._by_fd)

    def rebind(self, port: int) -> None:
        """Move to another port (listen_port changed): the new pair is bound before the old one is closed, so
        a failure (EADDRINUSE) leaves the old pair working. Remembered sources stay valid (same addresses). The
        file descriptors change: callers re-read :meth:`fileno` and re-register them with their poller."""
        if port != 0 and port == self.port:
            return
        old = [s for s in (self._v4, self._v6) if s is not None]
        self._open(port)
        for s in old:
            s.close()

    def set_fwmark(self, mark: int) -> None:
        """SO_MARK on both sockets (0 clears), for policy routing that keeps tunnel traffic out of the tunnel."""
        for s in self._by_fd.values():
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        self.fwmark = mark

    def close(self) -> None:
        for s in self._by_fd.values():
            s.close()
        self._by_fd = {}
        self._v4 = self._v6 = None

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sticky source ---------------------------------------------------------------------------------------

    def source_for(self, endpoint: Endpoint) -> str | None:
        """The local address replies to ``endpoint`` go out from, if one was recorded."""
        entry = self._sources.get(endpoint)
        if entry is None:
            return None
        return socket.inet_ntop(entry[0], entry[1])

    def clear_source(self, endpoint: Endpoint | None = None) -> None:
        """Forget the sticky source of one endpoint (or of all), e.g. when routes changed."""
        if endpoint is None:
            self._sources.clear()
        else:
            self._sources.pop(endpoint, None)

    def _remember(self, endpoint: Endpoint, family: int, local: bytes, ifindex: int) -> None:
        sources = self._sources
        entry = (family, local, ifindex)
        if sources.get(endpoint) == entry:
            return
        if endpoint not in sources and len(sources) >= MAX_STICKY_SOURCES:
            del sources[next(iter(sources))]
        sources[endpoint] = entry

    # -- receive ---------------------------------------------------------------------------------------------

    def recv_batch(self, fd: int, max_datagrams: int = 256) -> list[tuple[bytes | memoryview, Endpoint]]:
        """Drain one socket until EAGAIN (or ``max_datagrams``, which a GRO batch may overshoot)."""
        sock = self._by_fd.get(fd)
        if sock is None:
            raise ValueError(f"fd {fd} is not one of this UdpSocket's sockets")
        v6 = sock is self._v6  # (sock.family builds an enum member on every call)
        out: list[tuple[bytes | memoryview, Endpoint]] = []
        stats = self.stats
        # recvmsg rather than recvmsg_into a reused buffer: the kernel copies straight into the bytes object
        # handed out (shrunk to size), instead of into our buffer and then once more (up to 64 KB per GRO read).
        recvmsg = sock.recvmsg
        errors = 0
        # Datagrams of one batch mostly come from one endpoint with the same control messages: the endpoint
        # tuple and the parsed control messages (GRO size, sticky source) are reused while they repeat.
        last_addr: object = None
        last_anc: object = None
        endpoint: Endpoint = ("", 0)
        gso_size = 0
        while len(out) < max_datagrams:
            try:
                data, ancdata, _flags, addr = recvmsg(RECV_BUFFER, _CMSG_SPACE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:  # ECONNREFUSED and friends from ICMP: note and keep draining
                code = e.errno or 0
                stats.recv_errors[code] = stats.recv_errors.get(code, 0) + 1
                errors += 1
                if code in _FATAL_SEND_ERRORS or errors > 16:
                    break
                continue
            if addr != last_addr:
                host = addr[0]
                if v6 and host.startswith("::ffff:"):
                    host = canonical_host(host)
                endpoint = (host, addr[1])
                last_addr = addr
                last_anc = None
            if ancdata != last_anc:
                last_anc = ancdata
                gso_size = 0
                for level, ctype, cdata in ancdata:
                    if level == SOL_UDP and ctype == UDP_GRO:
                        gso_size = _INT.unpack_from(cdata)[0]
                    elif level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                        ifindex, spec_dst, _dst = _IN_PKTINFO.unpack_from(cdata)
                        self._remember(endpoint, socket.AF_INET, spec_dst, ifindex)
                    elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
                        dst6, ifindex = _IN6_PKTINFO.unpack_from(cdata)
                        self._remember(endpoint, socket.AF_INET6, dst6, ifindex)
            n = len(data)
            if gso_size and n > gso_size:
                dmv = memoryview(data)
                out.extend((dmv[i : i + gso_size], endpoint) for i in range(0, n, gso_size))
                stats.gro_batches += 1
            else:
                out.append((data, endpoint))
        stats.datagrams_received += len(out)
        return out

    # -- send ------------------------------------------------------------------------------------------------

    def _count_error(self, err: int | None, lost: int) -> None:
        err = err or 0
        self.stats.send_errors[err] = self.stats.send_errors.get(err, 0) + lost

    def send_batch(self, endpoint: Endpoint, datagrams: Sequence[Buffer]) -> None:
        """Send datagrams to one endpoint, in order: GSO runs of equal size (the last of a run may be shorter)
        when the kernel has UDP_SEGMENT, one sendmsg per datagram otherwise. Errors are counted, never raised.
        """
        if not datagrams:
            return
        host, port = endpoint
        if ":" in host and (host.startswith("::ffff:") or host.startswith("[")):
            host = canonical_host(host)
        sock = self._v6 if ":" in host else self._v4
        if sock is None:
            self._count_error(errno.EAFNOSUPPORT, len(datagrams))
            return
        address = (host, port)
        ancillary: list[tuple[int, int, bytes]] = []
        src = self._sources.get(endpoint)
        if src is not None:
            ancillary = [self._pktinfo(src)]
        if not self.gso or len(datagrams) == 1:
            self._send_singly(sock, address, datagrams, ancillary, endpoint)
            return
        i, count = 0, len(datagrams)
        while i < count:
            size = len(datagrams[i])
            j, total = i + 1, size
            limit = min(count, i + MAX_GSO_SEGMENTS)
            while j < limit:
                m = len(datagrams[j])
                if m > size or total + m > MAX_GSO_BYTES:
                    break
                total += m
                j += 1
                if m < size:
                    break
            run = datagrams[i:j]
            if len(run) == 1 or size == 0:
                ancillary = self._send_singly(sock, address, run, ancillary, endpoint)
            else:
                ancillary = self._send_gso(sock, address, run, size, ancillary, endpoint)
            i = j

    def _pktinfo(self, src: tuple[int, bytes, int]) -> tuple[int, int, bytes]:
        family, local, ifindex = src
        if family == socket.AF_INET:
            return (socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local, bytes(4)))
        # The interface index matters only for link-local sources (it names the link); elsewhere it would pin
        # replies to an interface that routing may have moved away from.
        link_local = local[0] == 0xFE and local[1] & 0xC0 == 0x80
        return (socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(local, ifindex if link_local else 0))

    def _drop_source(self, endpoint: Endpoint) -> list[tuple[int, int, bytes]]:
        self._sources.pop(endpoint, None)
        self.stats.sticky_source_resets += 1
        return []

    def _send_gso(
        self, sock: socket.socket, address: tuple[str, int], run: Sequence[Buffer], size: int,
        ancillary: list[tuple[int, int, bytes]], endpoint: Endpoint,
    ) -> list[tuple[int, int, bytes]]:
        try:
            sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _U16.pack(size)), *ancillary], 0, address)
        except OSError as e:
            if e.errno in _FATAL_SEND_ERRORS:
                raise
            if e.errno in (errno.EAGAIN, errno.ENOBUFS):  # buffer full: one by one would fail the same way
                self._count_error(e.errno, len(run))
                return ancillary
            # GSO refused for this route or size (EINVAL: segment above the path MTU; EIO: device without
            # checksum offload; ENOPROTOOPT: no UDP_SEGMENT at all), or a source/route problem: the
            # per-datagram path sorts it out (and forgets a dead sticky source). A kernel without UDP_SEGMENT
            # is not asked again.
            if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.gso = False
            self.stats.gso_fallbacks += 1
            return self._send_singly(sock, address, run, ancillary, endpoint)
        self.stats.gso_sends += 1
        self.stats.datagrams_sent += len(run)
        return ancillary

    def _send_singly(
        self, sock: socket.socket, address: tuple[str, int], datagrams: Sequence[Buffer],
        ancillary: list[tuple[int, int, bytes]], endpoint: Endpoint,
    ) -> list[tuple[int, int, bytes]]:
        sendmsg = sock.sendmsg
        sent = 0
        for d in datagrams:
            try:
                sendmsg((d,), ancillary, 0, address)
            except OSError as e:
                if ancillary and e.errno in _SOURCE_GONE:
                    # The remembered source address is gone (or never routable here): forget it and retry.
                    ancillary = self._drop_source(endpoint)
                    try:
                        sendmsg((d,), ancillary, 0, address)
                    except OSError as e2:
                        if e2.errno in _FATAL_SEND_ERRORS:
                            raise
                        self._count_error(e2.errno, 1)
                        continue
                    sent += 1
                    continue
                if e.errno in _FATAL_SEND_ERRORS:
                    raise
                self._count_error(e.errno, 1)
                continue
            sent += 1
        self.stats.datagrams_sent += sent
        return ancillary
