"""The UDP side of the data plane: one IPv4 and one IPv6 socket on the same port, batched with GSO and GRO.

Two sockets rather than one dual-stack socket, as wireguard-go's StdNetBind does: IPv6 can be absent or
disabled (the IPv4 socket still works), there are no v4-mapped addresses to translate on every datagram, and
IP_PKTINFO / IPV6_PKTINFO each stay on their own family. Sending uses UDP_SEGMENT (GSO, one sendmsg per ≤ 64
KB run of equal-size datagrams) and receiving UDP_GRO (one recvmsg per run, split on the gso_size control
message): per /work/shared/docs/dataplane.md that is 0.35 and 0.14 µs per datagram instead of 4.2 and 1.15.

Handshake steering: each family is in fact two sockets in one SO_REUSEPORT group, and a four-instruction classic
BPF program attached to the group makes the kernel put transport data (message type 4) into the first socket and
every other message (initiations, responses, cookie replies, garbage) into the second, which has a small buffer
(256 KiB, a few hundred messages). A handshake flood then fills and overflows only that small queue, where the
kernel drops the excess for nothing, and never delays or displaces the tunnel's own data; the event loop reads the
handshake socket with a budget per wakeup after draining data. Measured with bench/bench_flood.py (see
docs/hostile-results.md): flat out (~130,000 initiations/s offered) the tunnel kept 62 % of its throughput and
2.2 ms pings with steering, against 0 Gbit/s and 152 ms pings, half of them lost, with one socket. Where the
kernel refuses the program, one plain socket per family is used, as before.

Sticky source: every receive records the local address the peer wrote to (IP_PKTINFO / IPV6_RECVPKTINFO), and
replies to that endpoint carry it as the source in a PKTINFO control message, so a host with several addresses
answers from the one it was reached at, like kernel WireGuard.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence
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

SO_ATTACH_REUSEPORT_CBPF = 51
SO_MEMINFO = 55
SK_MEMINFO_RMEM_ALLOC = 0  # index in the SO_MEMINFO array: bytes queued for reading (the datagrams' truesize)
SK_MEMINFO_DROPS = 8  # index in the SO_MEMINFO array: datagrams the socket's full queue made the kernel drop
# What one queued handshake message costs a receive queue (the skb's truesize: 832 bytes on loopback here; the
# figure only turns queued bytes into a rough message count for the under-load decision).
HANDSHAKE_TRUESIZE = 768
_MEMINFO = struct.Struct("=9I")
SOCKET_BUFFER = 8 << 20
HANDSHAKE_SOCKET_BUFFER = 256 << 10
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


# Classic BPF, run by the kernel's SO_REUSEPORT selection with the UDP header already pulled, so byte 0 is the
# WireGuard message type: ldb [0]; jeq #4, next, skip 1; ret #0 (the data socket); ret #1 (the handshake socket).
# (code, jt, jf, k) as in struct sock_filter.
_STEER_PROGRAM = ((0x30, 0, 0, 0), (0x15, 0, 1, 4), (0x06, 0, 0, 0), (0x06, 0, 0, 1))
_STEER_FILTER = b"".join(struct.pack("=HBBI", *instruction) for instruction in _STEER_PROGRAM)


def _attach_steering(sock: socket.socket) -> None:
    """Attach _STEER_PROGRAM to the reuseport group of ``sock`` (SO_ATTACH_REUSEPORT_CBPF takes a struct
    sock_fprog: a length and a pointer to the instructions, which the kernel copies)."""
    import ctypes  # only here: the one place a pointer is needed

    program = ctypes.create_string_buffer(_STEER_FILTER, len(_STEER_FILTER))
    fprog = struct.pack("@HP", len(_STEER_PROGRAM), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def gso_runs(sizes: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """Cut datagrams of these sizes into UDP GSO sends: (start, end, segment size) per sendmsg. A run is
    datagrams of one size, then at most one shorter one (the kernel cuts the buffer at the segment size, so only
    the last may be short), within MAX_GSO_SEGMENTS and MAX_GSO_BYTES; an empty datagram goes alone."""
    i, count = 0, len(sizes)
    while i < count:
        size = sizes[i]
        j = i + 1
        if size:
            # Equal sizes as far as one sendmsg goes (a super-packet's datagrams are all one size, which
            # list.count checks in C instead of a Python step per datagram), then one shorter one.
            limit = min(count, i + MAX_GSO_SEGMENTS, i + MAX_GSO_BYTES // size)
            if sizes[j:limit].count(size) == limit - j:
                j = limit
            else:
                while sizes[j] == size:
                    j += 1
            if j < count and j - i < MAX_GSO_SEGMENTS and sizes[j] < size and (
                (j - i) * size + sizes[j] <= MAX_GSO_BYTES
            ):
                j += 1
        yield i, j, size
        i = j


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


def _close(*sockets: socket.socket | None) -> None:
    for sock in sockets:
        if sock is not None:
            sock.close()


class UdpSocket:
    """The UDP sockets a WireGuard device listens on. ``offload=False`` forces the plain path (no GSO, no GRO),
    for tests and for kernels that misbehave; ``steer=False`` keeps handshakes and data in one socket per family.
    """

    def __init__(self, port: int = 0, fwmark: int = 0, offload: bool = True, steer: bool = True) -> None:
        self.fwmark = fwmark
        self.offload = offload
        self.steer = steer
        self.stats = UdpStats()
        self.gso = False
        self.gro = False
        # endpoint -> (family, local address, ifindex) of the last datagram it sent us
        self._sources: dict[Endpoint, tuple[int, bytes, int]] = {}
        self._v4: socket.socket | None = None
        self._v6: socket.socket | None = None
        self._by_fd: dict[int, socket.socket] = {}
        self.handshake_fds: frozenset[int] = frozenset()  # the steered handshake sockets' descriptors
        self.port = 0
        self._open(port)

    # -- sockets ---------------------------------------------------------------------------------------------

    def _make(self, family: int, port: int) -> tuple[socket.socket, socket.socket | None]:
        """The data socket of one family bound to ``port``, and its handshake socket when steering works."""
        if self.steer:
            # A plain socket bound first claims the port exactly as wireguard-go would: EADDRINUSE when anyone
            # holds it (a reuseport group included), and a free port when 0 is asked for (a reuseport bind to
            # port 0 may be given a port that another of our own reuseport groups holds). It is closed, and the
            # group bound to its port, at once.
            probe = self._bind(family, port, reuseport=False)
            port = probe.getsockname()[1]
            probe.close()
            data = self._bind(family, port, reuseport=True)
            handshake: socket.socket | None = None
            try:
                handshake = self._bind(family, port, reuseport=True)
                _attach_steering(data)
                handshake.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, HANDSHAKE_SOCKET_BUFFER)
                return data, handshake
            except BaseException as exc:
                _close(data, handshake)
                # No reuseport BPF in this kernel (< 4.5), or not root: one socket, unsteered. The bind of the
                # second socket failing (EADDRINUSE: the port was taken between the probe and now) is raised.
                if not isinstance(exc, OSError) or handshake is None:
                    raise
                self.steer = False
        return self._bind(family, port, reuseport=False), None

    def _bind(self, family: int, port: int, reuseport: bool) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
            v4, v4_handshake = self._make(socket.AF_INET, port)
            chosen = v4.getsockname()[1]
            v6: socket.socket | None
            v6_handshake: socket.socket | None
            try:
                v6, v6_handshake = self._make(socket.AF_INET6, chosen)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    _close(v4, v4_handshake)
                    last = e
                    continue
                if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    _close(v4, v4_handshake)
                    raise
                v6 = v6_handshake = None
            self._install(v4, v6, chosen, [h for h in (v4_handshake, v6_handshake) if h is not None])
            return
        assert last is not None
        raise last

    def _install(self, v4: socket.socket, v6: socket.socket | None, port: int,
                 handshake: list[socket.socket]) -> None:
        gso, gro = self._probe_offloads(v4)
        if v6 is not None:
            gso6, gro6 = self._probe_offloads(v6)
            gso, gro = gso and gso6, gro and gro6
        self.gso, self.gro = gso, gro
        self._v4, self._v6 = v4, v6
        self._by_fd = {s.fileno(): s for s in (v4, v6, *handshake) if s is not None}
        self.handshake_fds = frozenset(s.fileno() for s in handshake)
        self.port = port

    def fileno(self) -> list[int]:
        """The file descriptors to watch for reading: IPv4 data, IPv6 data, then the handshake sockets (the
        ones in :attr:`handshake_fds`), if any."""
        return list(self._by_fd)

    def rebind(self, port: int) -> None:
        """Move to another port (listen_port changed): the new pair is bound before the old one is closed, so
        a failure (EADDRINUSE) leaves the old pair working. Remembered sources stay valid (same addresses). The
        file descriptors change: callers re-read :meth:`fileno` and re-register them with their poller."""
        if port != 0 and port == self.port:
            return
        old = list(self._by_fd.values())
        self._open(port)
        for s in old:
            s.close()

    @property
    def steering(self) -> bool:
        """Whether handshake messages have their own sockets (see the module docstring)."""
        return bool(self.handshake_fds)

    def _meminfo(self, fd: int, index: int) -> int:
        """One field of the socket's SO_MEMINFO array (SK_MEMINFO_*)."""
        return _MEMINFO.unpack(self._by_fd[fd].getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))[index]

    def queue_drops(self) -> tuple[int, int]:
        """Datagrams the kernel dropped because a socket's receive queue was full, as (data sockets, handshake
        sockets), since the sockets were opened: the drops that happen before the daemon sees anything."""
        data = handshake = 0
        for fd in self._by_fd:
            drops = self._meminfo(fd, SK_MEMINFO_DROPS)
            if fd in self.handshake_fds:
                handshake += drops
            else:
                data += drops
        return data, handshake

    def handshake_backlog(self) -> int:
        """About how many messages wait in the handshake sockets' queues (0 without steering): the shell's
        equivalent of the references' handshake queue length, which decides "under load"."""
        queued = sum(self._meminfo(fd, SK_MEMINFO_RMEM_ALLOC) for fd in self.handshake_fds)
        return queued // HANDSHAKE_TRUESIZE

    def set_fwmark(self, mark: int) -> None:
        """SO_MARK on both sockets (0 clears), for policy routing that keeps tunnel traffic out of the tunnel."""
        for s in self._by_fd.values():
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        self.fwmark = mark

    def close(self) -> None:
        for s in self._by_fd.values():
            s.close()
        self._by_fd = {}
        self.handshake_fds = frozenset()
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

    def recv_batch(
        self, fd: int, max_datagrams: int = 256, endpoints: set[Endpoint] | None = None,
    ) -> list[tuple[bytes | memoryview, Endpoint]]:
        """Drain one socket until EAGAIN (or ``max_datagrams``, which a GRO batch may overshoot). When given,
        ``endpoints`` receives every source endpoint of the batch (at the cost of one set insertion per change of
        sender, not per datagram)."""
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
                if endpoints is not None:
                    endpoints.add(endpoint)
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
                out += [(dmv[i : i + gso_size], endpoint) for i in range(0, n, gso_size)]
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
        for i, j, size in gso_runs([len(d) for d in datagrams]):
            run = datagrams[i:j]
            if j - i == 1 or size == 0:
                ancillary = self._send_singly(sock, address, run, ancillary, endpoint)
            else:
                ancillary = self._send_gso(sock, address, run, size, ancillary, endpoint)

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
