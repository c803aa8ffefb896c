"""The event loop: one epoll set drives the TUN device, the UDP sockets, the UAPI socket, rtnetlink and the core.

There is no polling tick. Each wakeup:

1. waits in ``epoll`` until a file descriptor is ready or until ``Device.next_deadline()`` (the core's earliest
   timer), whichever comes first;
2. drains every ready descriptor in batches (``Tun.read_packets`` / ``UdpSocket.recv_batch``, up to
   ``DRAIN_LIMIT`` per descriptor per wakeup so that one busy descriptor cannot starve the others: epoll is
   level-triggered and brings us back at once for the rest), serves UAPI clients, and reads rtnetlink and inotify.
   After a quiet wait (``QUIET_WAIT``) the TUN device and the data sockets are read once instead: see there;
3. feeds all datagrams to ``Device.receive`` and all packets to ``Device.send`` in one call each, runs
   ``Device.tick`` if a deadline passed;
4. flushes the outputs: ``take_datagrams()`` per endpoint with ``send_batch``, ``take_packets()`` with
   ``write_packets``. A UAPI ``set`` (a new endpoint starts a handshake at once) is flushed by the same step.

The loop ends on SIGINT/SIGTERM, when the UAPI socket file is removed or replaced (inotify on the path, as
wireguard-go watches it), and when the interface is deleted (RTM_DELLINK on an rtnetlink socket, or a TUN read
failing). Shutdown removes the socket file (if it is still ours) and closes the TUN, which deletes the interface.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import signal
import socket
import struct
import time
from pathlib import Path
from types import FrameType
from typing import Final

from wgpy.linux.tun import Tun, TunGoneError
from wgpy.linux.udp import UdpSocket
from wgpy.ops.audit import AuditError, AuditLog, record_changes, view_of_device
from wgpy.protocol.device import Device, Event, EventKind
from wgpy.protocol.peer import Endpoint
from wgpy.uapi.apply import SocketControl, apply_set, format_get, format_stats
from wgpy.uapi.request import GetRequest, Request, SetRequest, StatsRequest
from wgpy.uapi.server import UapiServer

log = logging.getLogger("wgpy.daemon")

Buffer = bytes | memoryview

BATCH: Final = 64
DRAIN_LIMIT: Final = 512
# TUN reads per wakeup stop sooner: whatever is read goes out as one burst of UDP (GSO) sends, and a peer that
# reads one datagram per syscall (wireguard-go before 2023) drops what overflows its socket buffer. Measured with
# bench_tunnel's wgpyd -> wireguard-go stream: 4,300-5,100 drops per 5 s at 64 against 8,700-16,600 at 512, and
# higher throughput; wgpyd <-> wgpyd unchanged within noise (one super-packet still fits in one read).
TUN_DRAIN_LIMIT: Final = 64
# Handshake messages read per wakeup from the steered handshake socket (wgpy/linux/udp.py). Data is drained first
# and in full (up to DRAIN_LIMIT); a flood then costs each wakeup at most this many mac1 checks and cookie replies,
# and the rest of it waits in, or overflows, that socket's small buffer, where dropping it costs us nothing.
# bench/bench_flood.py at 64: pings through the tunnel 3-5 ms and none lost under every flood, flat out included.
HANDSHAKE_BUDGET: Final = 64
MAX_CONFIRMED_SOURCES: Final = 65536
# A wakeup that ends a wait at least this long reads the TUN device and each data socket once, not until EAGAIN.
# After such a wait the packet is usually alone (a ping, a keystroke, a DNS query), and the read that would only
# return EAGAIN costs a system call and an exception on the round trip's critical path: 23 µs of the 81 µs this
# daemon spent reading a ping's echo request from the TUN after 10 ms asleep (measured in the daemon with
# perf_counter around each read). If more was queued, epoll returns at once and the next wakeup drains as
# before, so a burst after a pause costs one more epoll_wait and nothing else.
QUIET_WAIT: Final = 0.0002

# rtnetlink (linux/rtnetlink.h, linux/if_link.h)
RTMGRP_LINK: Final = 1
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
IFLA_MTU: Final = 4
IFF_UP: Final = 0x1
AUDIT_REJECTIONS_PER_SECOND: Final = 10
NLMSGHDR: Final = struct.Struct("=IHHII")
IFINFOMSG: Final = struct.Struct("=BxHiII")
RTATTR: Final = struct.Struct("=HH")

# inotify (linux/inotify.h)
IN_ATTRIB: Final = 0x4
IN_MOVE_SELF: Final = 0x800
IN_DELETE_SELF: Final = 0x400
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC


def short_key(public_key: bytes) -> str:
    """wireguard-go's ``peer(abcd…wxyz)``: the first and last four base64 characters."""
    text = base64.b64encode(public_key).decode()
    return f"peer({text[:4]}…{text[39:43]})"


class Inotify:
    """Watch one path with inotify (by ctypes: the standard library has no binding, and it is two calls)."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = int(fd)
        wd = libc.inotify_add_watch(self.fd, os.fsencode(path), IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path}")

    def drain(self) -> None:
        while True:
            try:
                if not os.read(self.fd, 4096):
                    return
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
        os.close(self.fd)


class EventLoop:
    def __init__(
        self, interface: str, tun: Tun, udp: UdpSocket, device: Device, listener: socket.socket,
        socket_file: Path | None,
    ) -> None:
        self.interface = interface
        self.tun = tun
        self.udp = udp
        self.device = device
        self.socket_file = socket_file
        self.stop_reason: str | None = None
        self.internal_errors = 0
        self.udp_backed_up = False
        self.confirmed_sources: dict[Endpoint, str | None] = {}
        self.epoll = select.epoll()
        self.server = UapiServer(listener, self.handle_uapi, self.epoll)
        self.sockets = SocketControl(self._rebind, self._set_fwmark)
        device.listen_port = udp.port
        device.fwmark = 0
        # The audit log (WGPY_AUDIT_LOG): configuration changes made over the UAPI and the sessions' security
        # events, one JSON line each. Rejected handshakes are capped per second so a flood cannot fill the disk.
        self.audit = AuditLog.from_env()
        self.ifname = tun.name
        self._rejections_window = 0.0
        self._rejections_logged = 0
        self._rejections_suppressed = 0
        if log.isEnabledFor(logging.DEBUG) or self.audit is not None:
            device.events = []

        self.tun_fd = tun.fd
        self.epoll.register(self.tun_fd, select.EPOLLIN)
        self.udp_fds: list[int] = []
        # Per wakeup: messages left in the handshake sockets (estimated), handshake messages read from them, and
        # the source endpoints of everything read.
        self.handshake_backlog = 0
        self.handshakes_read = 0
        self.sources: set[Endpoint] = set()
        self._register_udp()

        self.ifindex = socket.if_nametoindex(tun.name)
        self.netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.netlink.bind((0, RTMGRP_LINK))
        self.netlink.setblocking(False)
        self.epoll.register(self.netlink.fileno(), select.EPOLLIN)

        self.inotify: Inotify | None = None
        self.socket_inode: int | None = None
        if socket_file is not None:
            self.socket_inode = socket_file.lstat().st_ino
            self.inotify = Inotify(socket_file)
            self.epoll.register(self.inotify.fd, select.EPOLLIN)

        # Signals wake epoll through a non-blocking pipe (the handler itself only records the reason).
        self.link_seen_up = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self._old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self._old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    # --- lifecycle ------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(f"received {signal.Signals(signum).name}")

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def run(self) -> None:
        log.debug("Device started")
        device = self.device
        monotonic, wall_clock = time.monotonic, time.time
        while self.stop_reason is None:
            deadline = device.next_deadline()
            waited_from = monotonic()
            timeout = -1.0 if deadline is None else max(0.0, deadline - waited_from)
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                continue
            drain = monotonic() - waited_from < QUIET_WAIT
            packets: list[Buffer] = []
            datagrams: list[tuple[Buffer, Endpoint]] = []
            self.udp_backed_up = False
            self.handshake_backlog = 0
            self.handshakes_read = 0
            self.sources.clear()
            for fd, mask in events:
                if fd == self.tun_fd:
                    self._read_tun(packets, mask, drain)
                elif fd in self.udp_fds:
                    self._read_udp(fd, datagrams, drain)
                elif self.server.owns(fd):
                    self.server.handle(fd, mask)
                elif fd == self.netlink.fileno():
                    self._read_netlink()
                elif self.inotify is not None and fd == self.inotify.fd:
                    self.inotify.drain()
                    self._check_socket_file()
                elif fd == self.wake_r:
                    self._drain_wakeup()
            now, wall = monotonic(), wall_clock()
            try:
                # The data plane hands out memoryviews over its buffers where that saves a copy; the core only
                # reads them through the buffer protocol.
                if datagrams:
                    self._note_backlog(datagrams)
                    changed = self._changed_sources()
                    authenticated = device.receive(datagrams, now, wall)
                    if changed:
                        self._settle_sources(changed, authenticated)
                if packets:
                    device.send(packets, now, wall)
                deadline = device.next_deadline()
                if deadline is not None and deadline <= now:
                    device.tick(now, wall)
            except Exception:
                # The core drops bad input silently; an exception here is a bug. One batch is lost, the tunnel
                # and every other peer keep running.
                self.internal_errors += 1
                log.exception("internal error in the protocol core; batch dropped")
            self.flush()
        log.debug("Device closing: %s", self.stop_reason)

    def close(self) -> None:
        """Remove everything the daemon made: the socket file (if still ours), the interface, the sockets."""
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self.server.close()
        if self.audit is not None:
            self.audit.close()
        if self.socket_file is not None:
            try:
                if self.socket_file.lstat().st_ino == self.socket_inode:
                    self.socket_file.unlink()
            except FileNotFoundError:
                pass
        if self.inotify is not None:
            self.inotify.close()
        self.netlink.close()
        self.udp.close()
        self.tun.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.epoll.close()
        keylog = self.device.keylog
        if keylog is not None and hasattr(keylog, "close"):
            keylog.close()
        log.debug("Device closed")

    # --- I/O --------------------------------------------------------------------------------------------------

    def _read_tun(self, packets: list[Buffer], mask: int, drain: bool = True) -> None:
        size = BATCH if drain else 1  # after a quiet wait: one read (QUIET_WAIT)
        try:
            while len(packets) < TUN_DRAIN_LIMIT:
                batch = self.tun.read_packets(size)
                packets.extend(batch)
                if len(batch) < size or not drain:  # read_packets stops short only at EAGAIN: no second EAGAIN
                    break
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return
            self.stop(f"TUN read failed ({exc.strerror}): interface gone")
            return
        if mask & (select.EPOLLHUP | select.EPOLLERR) and not packets:
            self.stop("TUN device hung up")

    def _changed_sources(self) -> list[Endpoint]:
        """Endpoints of this batch whose sticky local address (recorded by the UdpSocket for every datagram, before
        anything was authenticated) differs from the one last confirmed by an authenticated message."""
        source_for, confirmed = self.udp.source_for, self.confirmed_sources
        changed = []
        for endpoint in self.sources:  # the batch's endpoints, collected by recv_batch
            if source_for(endpoint) != confirmed.get(endpoint):
                changed.append(endpoint)
        return changed

    def _settle_sources(self, changed: list[Endpoint], authenticated: set[Endpoint]) -> None:
        """Keep a new reply source only if a message from that endpoint authenticated in this batch.

        Linux and wireguard-go learn a peer's endpoint, and the local address they answer it from, only from
        authenticated packets. Otherwise one spoofed datagram, with a peer's address as its source and another of
        our addresses as its destination, would make us answer that peer from the address the attacker chose.
        An unconfirmed source is forgotten (the kernel's routing picks the source again) until an authenticated
        message from the endpoint records one. The core tells which sources authenticated, so this costs nothing
        per peer, even under a flood of spoofed sources.
        """
        confirmed = self.confirmed_sources
        for endpoint in changed:
            if endpoint in authenticated:
                if len(confirmed) >= MAX_CONFIRMED_SOURCES and endpoint not in confirmed:
                    confirmed.clear()  # bounded; a forgotten entry costs one more check, never correctness
                confirmed[endpoint] = self.udp.source_for(endpoint)
            else:
                self.udp.clear_source(endpoint)
                confirmed.pop(endpoint, None)

    def _note_backlog(self, datagrams: list[tuple[Buffer, Endpoint]]) -> None:
        """Tell the core how many handshake messages wait, so that it counts itself under load before it has
        spent a DH on each of a flood's first thousand initiations (the references look at their queue length).

        The handshake messages of this batch are waiting, and so is what the steered handshake socket still
        holds when its budget ran out (its queue, as the references count theirs). Without steering, a socket
        not drained (DRAIN_LIMIT reached) holds at least as many more behind the batch.
        """
        if self.udp.handshake_fds:
            # Steered: handshake messages only come from the handshake sockets, and were counted as they were read.
            self.device.note_backlog(self.handshakes_read + self.handshake_backlog)
            return
        waiting = 0
        for data, _ in datagrams:
            if data[0:1] in (b"\x01", b"\x02"):
                waiting += 1
        if self.udp_backed_up:
            waiting *= 2
        self.device.note_backlog(waiting)

    def _read_udp(self, fd: int, datagrams: list[tuple[Buffer, Endpoint]], drain: bool = True) -> None:
        if fd in self.udp.handshake_fds:
            try:
                batch = self.udp.recv_batch(fd, HANDSHAKE_BUDGET, self.sources)
            except OSError as exc:
                log.debug("UDP receive: %s", exc)
                return
            datagrams.extend(batch)
            self.handshakes_read += len(batch)
            if len(batch) >= HANDSHAKE_BUDGET:  # more wait in the socket: tell the core how many (_note_backlog)
                self.handshake_backlog += self.udp.handshake_backlog()
            return
        start = len(datagrams)
        size = BATCH if drain else 1  # after a quiet wait: one read (QUIET_WAIT)
        while len(datagrams) - start < DRAIN_LIMIT:
            try:
                batch = self.udp.recv_batch(fd, size, self.sources)
            except OSError as exc:  # ECONNREFUSED from ICMP and friends: never end the daemon
                log.debug("UDP receive: %s", exc)
                return
            datagrams.extend(batch)
            if len(batch) < size or not drain:  # recv_batch stops short only at EAGAIN (or errors): drained
                return
        self.udp_backed_up = True

    def flush(self) -> None:
        device = self.device
        for endpoint, batch in device.take_datagrams():
            try:
                self.udp.send_batch(endpoint, batch)
            except OSError as exc:
                log.debug("UDP send to %s failed: %s", endpoint, exc)
        packets = device.take_packets()
        if packets:
            try:
                self.tun.write_packets(packets)
            except TunGoneError:
                self.stop("TUN device gone")
            except OSError as exc:
                log.debug("TUN write failed: %s", exc)
        if device.events is not None:
            for event in device.take_events():
                if log.isEnabledFor(logging.DEBUG):
                    self._log_event(event)
                if self.audit is not None:
                    try:
                        self._audit_event(event)
                    except (AuditError, OSError) as exc:  # an audit failure must never stop the tunnel
                        log.error("audit log: %s", exc)

    def _audit_event(self, event: Event) -> None:
        assert self.audit is not None
        public_key = base64.b64encode(event.peer).decode() if event.peer else None
        if event.kind is EventKind.HANDSHAKE_COMPLETED:
            self.audit.event("handshake_completed", actor="daemon", interface=self.ifname, public_key=public_key,
                             role=event.detail)
        elif event.kind is EventKind.ENDPOINT_CHANGED:
            self.audit.event("endpoint_changed", actor="daemon", interface=self.ifname, public_key=public_key,
                             change=event.detail)
        elif event.kind is EventKind.HANDSHAKE_REJECTED:
            now = time.monotonic()
            if now - self._rejections_window >= 1.0:
                if self._rejections_suppressed:
                    self.audit.event("handshake_rejected", actor="daemon", interface=self.ifname,
                                     reason="rate of rejections over the audit cap",
                                     suppressed=self._rejections_suppressed)
                self._rejections_window, self._rejections_logged, self._rejections_suppressed = now, 0, 0
            if self._rejections_logged < AUDIT_REJECTIONS_PER_SECOND:
                self._rejections_logged += 1
                self.audit.event("handshake_rejected", actor="daemon", interface=self.ifname, public_key=public_key,
                                 reason=event.detail)
            else:
                self._rejections_suppressed += 1

    def _log_event(self, event: Event) -> None:
        who = short_key(event.peer) if event.peer else "device"
        detail = f": {event.detail}" if event.detail else ""
        text = {
            EventKind.HANDSHAKE_INITIATED: "Sending handshake initiation",
            EventKind.HANDSHAKE_COMPLETED: "Handshake completed",
            EventKind.HANDSHAKE_REJECTED: "Handshake rejected",
            EventKind.HANDSHAKE_GAVE_UP: "Handshake did not complete, giving up",
            EventKind.ENDPOINT_CHANGED: "Endpoint changed",
            EventKind.COOKIE_SENT: "Sending cookie response",
            EventKind.KEYS_ZEROED: "Removing all keys, since we haven't received a new one in 540 seconds",
        }.get(event.kind, event.kind.value)
        log.debug("%s - %s%s", who, text, detail)

    def _register_udp(self) -> None:
        for fd in self.udp_fds:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        self.udp_fds = list(self.udp.fileno())
        for fd in self.udp_fds:
            self.epoll.register(fd, select.EPOLLIN)

    def _rebind(self, port: int) -> int:
        old = list(self.udp_fds)
        for fd in old:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        self.udp_fds = []
        try:
            self.udp.rebind(port)
        finally:
            self._register_udp()
        log.debug("UDP bind has been updated")
        return int(self.udp.port)

    def _set_fwmark(self, mark: int) -> None:
        self.udp.set_fwmark(mark)

    # --- UAPI ---------------------------------------------------------------------------------------------------

    def handle_uapi(self, request: Request) -> tuple[str, int]:
        if isinstance(request, GetRequest):
            return format_get(self.device), 0
        if isinstance(request, StatsRequest):
            # The shell's own counters follow the core's: nothing the daemon drops goes uncounted.
            udp, tun = self.udp.stats, self.tun.stats
            data_queue_drops, handshake_queue_drops = self.udp.queue_drops()
            extra = {
                "internal_errors": self.internal_errors,
                "tun_read_errors": tun.read_errors,
                "tun_write_errors": tun.write_errors,
                "udp_send_errors": sum(udp.send_errors.values()),
                "udp_recv_errors": sum(udp.recv_errors.values()),
                "udp_handshake_steering": int(self.udp.steering),
                "udp_data_queue_drops": data_queue_drops,
                "udp_handshake_queue_drops": handshake_queue_drops,
            }
            return format_stats(self.device) + "".join(f"{k}={v}\n" for k, v in extra.items()), 0
        assert isinstance(request, SetRequest)
        before = view_of_device(self.device) if self.audit is not None else None
        apply_set(self.device, request, time.monotonic(), time.time(), self.sockets)
        if self.audit is not None and before is not None:
            try:
                record_changes(self.audit, "uapi", self.ifname, before, view_of_device(self.device))
            except (AuditError, OSError) as exc:
                log.error("audit log: %s", exc)
        log.debug("UAPI: set applied (%d device keys, %d peer sections)", len(request.device), len(request.peers))
        return "", 0

    # --- interface and socket file ----------------------------------------------------------------------------

    def _read_netlink(self) -> None:
        while True:
            try:
                data = self.netlink.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: we missed messages; check the interface directly
                log.debug("rtnetlink: %s", exc)
                self._check_interface()
                return
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    break
                body = offset + NLMSGHDR.size
                if kind in (RTM_NEWLINK, RTM_DELLINK) and body + IFINFOMSG.size <= len(data):
                    _family, _type, index, _iflags, _change = IFINFOMSG.unpack_from(data, body)
                    if index == self.ifindex:
                        if kind == RTM_DELLINK:
                            self.stop("interface deleted")
                        else:
                            self._link_attributes(data[body + IFINFOMSG.size:offset + length])
                            up = bool(_iflags & IFF_UP)
                            # The interface is created down and configured before it is brought up (wg-quick);
                            # only a down that follows an up stops the device.
                            self.link_seen_up = self.link_seen_up or up
                            if self.link_seen_up and up != self.device.link_up:
                                log.debug("Interface state was %s, requested %s", _updown(not up), _updown(up))
                                self.device.set_link_up(up, time.monotonic(), time.time())
                offset += (length + 3) & ~3

    def _link_attributes(self, attrs: bytes) -> None:
        offset = 0
        while offset + RTATTR.size <= len(attrs):
            length, kind = RTATTR.unpack_from(attrs, offset)
            if length < RTATTR.size:
                return
            if kind == IFLA_MTU and length >= RTATTR.size + 4:
                mtu = struct.unpack_from("=I", attrs, offset + RTATTR.size)[0]
                if mtu != self.device.mtu:
                    log.debug("MTU updated: %d", mtu)
                    self.device.mtu = mtu
            offset += (length + 3) & ~3

    def _check_interface(self) -> None:
        try:
            socket.if_nametoindex(self.tun.name)
        except OSError:
            self.stop("interface deleted")

    def _check_socket_file(self) -> None:
        assert self.socket_file is not None
        try:
            inode = self.socket_file.lstat().st_ino
        except FileNotFoundError:
            self.stop("UAPI socket file removed")
            return
        if inode != self.socket_inode:
            self.stop("UAPI socket file replaced")

    def _drain_wakeup(self) -> None:
        while True:
            try:
                if not os.read(self.wake_r, 512):
                    return
            except (BlockingIOError, InterruptedError):
                return


def _updown(up: bool) -> str:
    return "up" if up else "down"
