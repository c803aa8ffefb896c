"""Server framing over real Unix sockets and a real epoll: interleaving, limits, slow and vanishing clients."""

from __future__ import annotations

import os
import select
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgpy.uapi.request import EIO, GetRequest, Request, SetRequest, StatsRequest
from wgpy.uapi.server import MAX_LINE, MAX_PENDING_OUTPUT, UapiServer, listen, socket_path


class Harness:
    """A server on a socket in a temporary directory with a handler that records what it was asked."""

    def __init__(self, directory: Path, **kw: int) -> None:
        self.epoll = select.epoll()
        self.listener = listen("wgtest0", directory)
        self.path = socket_path("wgtest0", directory)
        self.requests: list[Request] = []
        self.get_body = "listen_port=1\n"
        self.server = UapiServer(self.listener, self.handle, self.epoll, **kw)
        self.clients: list[socket.socket] = []

    def handle(self, request: Request) -> tuple[str, int]:
        self.requests.append(request)
        if isinstance(request, GetRequest):
            return self.get_body, 0
        return "", 0

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.path))
        sock.setblocking(False)
        self.clients.append(sock)
        self.pump()
        return sock

    def pump(self, rounds: int = 5) -> None:
        for _ in range(rounds):
            ready = self.epoll.poll(0.002)
            if not ready:
                return
            for fd, events in ready:
                assert self.server.owns(fd)
                self.server.handle(fd, events)

    def read(self, sock: socket.socket) -> bytes:
        self.pump()
        out = b""
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return out
            if not data:
                return out + b"<EOF>"
            out += data

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        self.server.close()
        self.epoll.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "run")
    yield h
    h.close()


def test_socket_file_modes(harness: Harness) -> None:
    assert stat.S_IMODE(harness.path.parent.stat().st_mode) == 0o755
    st = harness.path.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700


def test_stale_socket_replaced_live_one_kept(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    stale = listen("wgstale", directory)
    stale.close()  # the file stays, nobody listens: a dead daemon's leftover
    fresh = listen("wgstale", directory)
    with pytest.raises(OSError) as info:
        listen("wgstale", directory)  # somebody listens now
    assert "listening" in str(info.value)
    fresh.close()
    (directory / "wgother.sock").write_text("not a socket")
    with pytest.raises(OSError):
        listen("wgother", directory)


def test_get_and_set_on_one_connection(harness: Harness) -> None:
    c = harness.connect()
    c.sendall(b"get=1\n\nset=1\nlisten_port=5\n\nwgpy_stats=1\n\n")
    assert harness.read(c) == b"listen_port=1\nerrno=0\n\nerrno=0\n\nerrno=0\n\n"
    assert isinstance(harness.requests[0], GetRequest)
    assert isinstance(harness.requests[1], SetRequest) and isinstance(harness.requests[2], StatsRequest)


def test_interleaved_clients_byte_by_byte(harness: Harness) -> None:
    a, b = harness.connect(), harness.connect()
    req_a = b"set=1\nlisten_port=1\n\n"
    req_b = b"set=1\nfwmark=2\n\n"
    for i in range(max(len(req_a), len(req_b))):
        if i < len(req_a):
            a.send(req_a[i:i + 1])
        if i < len(req_b):
            b.send(req_b[i:i + 1])
        harness.pump(1)
    assert harness.read(a) == b"errno=0\n\n" and harness.read(b) == b"errno=0\n\n"
    kinds = set()
    for request in harness.requests:
        assert isinstance(request, SetRequest) and len(request.device) == 1 and not request.peers
        kinds.add(type(request.device[0]).__name__)
    assert kinds == {"SetListenPort", "SetFwmark"}


def test_refused_set_answers_errno_and_connection_stays_usable(harness: Harness) -> None:
    c = harness.connect()
    c.sendall(b"set=1\nfoo=bar\nlisten_port=3\n\nset=1\nnoequals\n\nget=1\n\n")
    assert harness.read(c) == b"errno=-22\n\nerrno=-71\n\nlisten_port=1\nerrno=0\n\n"
    assert len(harness.requests) == 1  # only the get reached the handler


def test_unknown_operation_hangs_up_without_answer(harness: Harness) -> None:
    c = harness.connect()
    c.sendall(b"get=2\n\n")
    assert harness.read(c) == b"<EOF>"
    assert not harness.server.clients


def test_set_cut_short_by_eof_is_processed(harness: Harness) -> None:
    c = harness.connect()
    c.sendall(b"set=1\nlisten_port=9")
    c.shutdown(socket.SHUT_WR)
    assert harness.read(c) == b"errno=0\n\n<EOF>"
    request = harness.requests[0]
    assert isinstance(request, SetRequest) and request.device[0].port == 9  # type: ignore[union-attr]


def test_over_long_line_refused(harness: Harness) -> None:
    c = harness.connect()
    c.sendall(b"set=1\nallowed_ip=")
    harness.pump()
    chunk = b"1" * 8192
    for _ in range(MAX_LINE // len(chunk) + 2):
        try:
            c.send(chunk)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            break
        harness.pump(1)
    assert harness.read(c) == f"errno={EIO}\n\n".encode() + b"<EOF>"
    assert not harness.requests


def test_oversized_request_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path / "run", max_request=10_000)
    try:
        c = h.connect()
        c.sendall(b"set=1\n")
        for _ in range(1000):
            try:
                c.send(b"listen_port=1\n")
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            h.pump(1)
        assert h.read(c).startswith(f"errno={EIO}\n\n".encode())
        assert not h.requests
    finally:
        h.close()


def test_slow_reader_blocks_nobody(harness: Harness) -> None:
    """A client that pipelines gets without reading stops being read; another client is served meanwhile."""
    harness.get_body = "x" * 60_000 + "\n"
    slow = harness.connect()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    for _ in range(400):
        try:
            sent += slow.send(b"get=1\n\n" * 64)
        except BlockingIOError:
            break
        harness.pump(1)
    client = harness.server.clients[next(iter(harness.server.clients))]
    assert len(client.outbuf) >= MAX_PENDING_OUTPUT - 60_000
    assert len(client.outbuf) < MAX_PENDING_OUTPUT + 100_000  # bounded, whatever the slow client sent
    fast = harness.connect()
    fast.sendall(b"set=1\nlisten_port=2\n\n")
    assert harness.read(fast) == b"errno=0\n\n"
    # The slow client now reads everything; every get it sent is answered in full, in order.
    slow.setblocking(True)
    slow.settimeout(0.05)
    received = 0
    answers = 0
    expected = sent // len(b"get=1\n\n")
    answer_size = len(harness.get_body) + len("errno=0\n\n")
    for _ in range(100_000):
        harness.pump(1)
        try:
            data = slow.recv(1 << 20)
        except TimeoutError:
            data = b""
        received += len(data)
        answers = received // answer_size
        if answers >= expected:
            break
    assert answers == expected and received == expected * answer_size


def test_client_that_vanishes_is_dropped(harness: Harness) -> None:
    harness.get_body = "y" * 1_000_000 + "\n"
    c = harness.connect()
    c.sendall(b"get=1\n\n")
    harness.pump(1)
    c.close()
    harness.clients.remove(c)
    harness.pump()
    assert not harness.server.clients


def test_too_many_clients(tmp_path: Path) -> None:
    h = Harness(tmp_path / "run", max_clients=2)
    try:
        a, b, c = h.connect(), h.connect(), h.connect()
        assert h.read(c) == b"<EOF>"
        a.sendall(b"get=1\n\n")
        assert h.read(a).endswith(b"errno=0\n\n")
        del b
    finally:
        h.close()


def test_no_fd_leak(harness: Harness) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        c = harness.connect()
        c.sendall(b"get=1\n\n")
        harness.read(c)
        c.close()
        harness.clients.remove(c)
        harness.pump()
    assert len(os.listdir("/proc/self/fd")) <= before + 1
