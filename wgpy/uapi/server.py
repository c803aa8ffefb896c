"""The UAPI socket, server side: non-blocking, driven by the daemon's epoll loop.

Every client has its own input and output buffer, so many clients can interleave their requests byte by byte and
a client that does not read its answers never blocks the daemon: when its unsent output passes
``MAX_PENDING_OUTPUT`` the server stops reading from it (and stops processing its pipelined requests) until it
drains. Limits, chosen to match wireguard-go where it has one:

- a line may be at most ``MAX_LINE`` bytes (wireguard-go's ``bufio.Scanner`` limit, 64 KiB); a longer one
  answers ``errno=-5`` (-EIO, what wireguard-go answers when its scanner fails) and closes the connection;
- a request may be at most ``max_request`` bytes (16 MiB by default: far beyond any real ``wg setconf``) before
  it is refused the same way: the server never buffers without bound;
- at most ``max_clients`` connections at once; more are accepted and closed at once.

Like wireguard-go, a connection carries any number of requests, an unknown operation line closes it without an
answer, and a ``set=1`` cut short by end-of-file is processed as if it had its final empty line. Unlike
wireguard-go, a refused ``set`` is consumed to its final empty line (wireguard-go stops reading at the bad line,
then reads the rest as operations and hangs up): the connection stays usable.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from wgpy.uapi.request import EIO, OPERATIONS, Request, UapiError, parse_request

log = logging.getLogger("wgpy.uapi")

MAX_LINE: Final = 64 * 1024
MAX_REQUEST: Final = 16 * 1024 * 1024
MAX_CLIENTS: Final = 128
MAX_PENDING_OUTPUT: Final = 4 * 1024 * 1024
RECV_SIZE: Final = 64 * 1024
# wireguard-go's ipc.IpcErrorUnknown: an error the server did not expect.
EUNKNOWN: Final = -55

SOCKET_DIR: Final = Path("/var/run/wireguard")

# The handler answers a request with (response body lines, errno); it may raise UapiError instead.
Handler = Callable[[Request], tuple[str, int]]


@dataclass
class Client:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    operation: str | None = None
    lines: list[str] = field(default_factory=list)
    request_bytes: int = 0
    outbuf: bytearray = field(default_factory=bytearray)
    eof: bool = False  # the client will send nothing more: close once the output is flushed
    events: int = 0


class UapiServer:
    """Accepts and serves UAPI clients on a listening Unix socket; every socket is registered in ``epoll``."""

    def __init__(
        self, listener: socket.socket, handler: Handler, epoll: select.epoll, *,
        max_request: int = MAX_REQUEST, max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.listener = listener
        self.listener.setblocking(False)
        self.handler = handler
        self.epoll = epoll
        self.max_request = max_request
        self.max_clients = max_clients
        self.clients: dict[int, Client] = {}
        epoll.register(listener.fileno(), select.EPOLLIN)

    def fileno(self) -> int:
        return self.listener.fileno()

    def owns(self, fd: int) -> bool:
        return fd == self.listener.fileno() or fd in self.clients

    def handle(self, fd: int, events: int) -> None:
        """Called by the event loop for any fd for which :meth:`owns` is true."""
        if fd == self.listener.fileno():
            self._accept()
            return
        client = self.clients.get(fd)
        if client is None:
            return
        if events & select.EPOLLOUT:
            self._flush(client)
            # Output drained: requests pipelined behind a backed-up answer can now be processed.
            if fd in self.clients and b"\n" in client.inbuf:
                self._process(client)
        if fd in self.clients and events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read(client)
        if fd in self.clients:
            self._update(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        try:
            self.epoll.unregister(self.listener.fileno())
        except (OSError, ValueError):
            pass
        self.listener.close()

    # --- internals ---------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: never end the daemon over a client
                log.error("UAPI accept failed: %s", exc)
                return
            if len(self.clients) >= self.max_clients:
                log.error("UAPI: too many clients (%d), refusing one", len(self.clients))
                sock.close()
                continue
            sock.setblocking(False)
            client = Client(sock)
            self.clients[sock.fileno()] = client
            client.events = select.EPOLLIN
            self.epoll.register(sock.fileno(), client.events)

    def _read(self, client: Client) -> None:
        while len(client.outbuf) < MAX_PENDING_OUTPUT and not client.eof:
            try:
                data = client.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            if not data:
                client.eof = True
                break
            client.inbuf += data
            self._process(client)
            if client.sock.fileno() not in self.clients:
                return
        if client.eof:
            self._finish_at_eof(client)

    def _process(self, client: Client) -> None:
        """Consume complete lines; answer every complete request. Stops while output is backed up."""
        start = 0
        buf = client.inbuf
        while len(client.outbuf) < MAX_PENDING_OUTPUT and client.sock.fileno() >= 0:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if len(line) > MAX_LINE:
                del buf[:start]
                self._fail_and_close(client, EIO, "UAPI line too long")
                return
            if not self._line(client, line.decode("utf-8", "replace")):
                del buf[:start]
                return
        del buf[:start]
        if len(buf) > MAX_LINE:
            self._fail_and_close(client, EIO, "UAPI line too long")

    def _line(self, client: Client, line: str) -> bool:
        """One line of input; False when the connection is being closed."""
        if client.operation is None:
            if line not in OPERATIONS:
                log.error("invalid UAPI operation: %.64r", line)
                client.eof = True  # wireguard-go hangs up without an answer
                client.inbuf.clear()
                return False
            client.operation = line
            client.lines = []
            client.request_bytes = len(line) + 1
            return True
        if line:
            client.request_bytes += len(line) + 1
            if client.request_bytes > self.max_request:
                self._fail_and_close(client, EIO, f"UAPI request larger than {self.max_request} bytes")
                return False
            client.lines.append(line)
            return True
        self._answer(client)
        return True

    def _answer(self, client: Client) -> None:
        operation, lines = client.operation, client.lines
        client.operation, client.lines, client.request_bytes = None, [], 0
        assert operation is not None
        try:
            body, code = self.handler(parse_request(operation, lines))
        except UapiError as exc:
            log.error("IPC error %d: %s", exc.code, exc)
            body, code = "", exc.code
        except Exception:
            log.exception("UAPI: unexpected error")
            body, code = "", EUNKNOWN
        client.outbuf += f"{body}errno={code}\n\n".encode()
        self._flush(client)

    def _finish_at_eof(self, client: Client) -> None:
        if client.operation == "set=1":
            if client.inbuf:  # a last line without its newline, as Go's scanner yields it
                self._line(client, bytes(client.inbuf).decode("utf-8", "replace"))
                client.inbuf.clear()
            if client.operation is not None:
                self._answer(client)
        client.operation = None
        if not client.outbuf:
            self._drop(client)

    def _fail_and_close(self, client: Client, code: int, message: str) -> None:
        log.error("IPC error %d: %s", code, message)
        client.outbuf += f"errno={code}\n\n".encode()
        client.inbuf.clear()
        client.operation, client.lines = None, []
        client.eof = True
        self._flush(client)

    def _flush(self, client: Client) -> None:
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(client)
                return
            del client.outbuf[:sent]
        if client.eof and client.sock.fileno() in self.clients:
            self._drop(client)

    def _update(self, client: Client) -> None:
        wanted = 0
        if client.outbuf:
            wanted |= select.EPOLLOUT
        if len(client.outbuf) < MAX_PENDING_OUTPUT and not client.eof:
            wanted |= select.EPOLLIN
        if wanted != client.events:
            client.events = wanted
            self.epoll.modify(client.sock.fileno(), wanted)

    def _drop(self, client: Client) -> None:
        fd = client.sock.fileno()
        if fd in self.clients:
            del self.clients[fd]
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        client.sock.close()


# --- the socket file ---------------------------------------------------------------------------------------------


def socket_path(interface: str, directory: Path = SOCKET_DIR) -> Path:
    return directory / f"{interface}.sock"


def listen(interface: str, directory: Path = SOCKET_DIR) -> socket.socket:
    """Bind ``DIR/IFACE.sock`` as wireguard-go does: directory 0755, socket 0700.

    A socket file left by a dead daemon is replaced; one somebody still listens on is not (EADDRINUSE): two
    daemons must never fight over one interface.
    """
    if not directory.is_dir():
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # whatever the umask; an existing directory is left as it is
    path = socket_path(interface, directory)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()
        except FileNotFoundError:
            pass
        else:
            raise OSError(errno.EADDRINUSE, f"{path}: another daemon is listening on it")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o700)
    listener.listen(64)
    listener.setblocking(False)
    return listener
