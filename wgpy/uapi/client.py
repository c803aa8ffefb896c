"""The UAPI client: talk to any userspace WireGuard daemon (wireguard-go, wgpyd) over its Unix socket.

Mirrors what wireguard-tools does in ``ipc-uapi.h`` / ``ipc-uapi-unix.h``: a device is found by its
socket ``<run dir>/IFACE.sock``; ``get=1`` answers are read line by line until ``errno=N`` and its empty
line; peers and allowed IPs are kept in the daemon's order (wg's pretty output sorts peers itself, its dump
does not).

The run directory is ``/var/run/wireguard`` as for wg, overridable with ``$WGPY_RUN_DIR`` (tests, unprivileged
use) or the ``run_dir`` argument.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from wgpy import keys

DEFAULT_RUN_DIR = "/var/run/wireguard"
SOCK_SUFFIX = ".sock"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Endpoint = tuple[str, int]


class UapiError(OSError):
    """A UAPI request failed: ``errno`` is positive (the daemon answers ``errno=-22`` for EINVAL)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        code = abs(code)
        super().__init__(code, message or os.strerror(code))


@dataclass
class PeerState:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)  # None: no preshared key (all zero)
    endpoint: Endpoint | None = None  # (canonical host, port)
    last_handshake: tuple[int, int] = (0, 0)  # (seconds, nanoseconds) since the epoch; (0, 0): never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: list[Network] = field(default_factory=list)
    protocol_version: int = 1


@dataclass
class DeviceState:
    name: str
    private_key: bytes | None = field(default=None, repr=False)
    public_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerState] = field(default_factory=list)


def run_dir() -> str:
    return os.environ.get("WGPY_RUN_DIR", DEFAULT_RUN_DIR)


def socket_path(iface: str, directory: str | None = None) -> str:
    return os.path.join(directory or run_dir(), iface + SOCK_SUFFIX)


def canonical_host(host: str) -> str:
    """The textual form glibc's getnameinfo(NI_NUMERICHOST) gives, which is what wg prints."""
    if ":" in host:
        address, _, zone = host.partition("%")
        text = socket.inet_ntop(socket.AF_INET6, ipaddress.IPv6Address(address).packed)
        return f"{text}%{zone}" if zone else text
    return socket.inet_ntop(socket.AF_INET, ipaddress.IPv4Address(host).packed)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """``a.b.c.d:port`` or ``[v6]:port`` (as the daemon writes it) to (canonical host, port)."""
    if text.startswith("["):
        end = text.index("]")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"bad endpoint {text!r}")
        port = rest[1:]
    else:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad endpoint {text!r}")
    return canonical_host(host), int(port)


def format_network(network: Network) -> str:
    """inet_ntop's form of the prefix (Python renders IPv4-mapped IPv6 differently from glibc)."""
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    return f"{socket.inet_ntop(family, network.network_address.packed)}/{network.prefixlen}"


def _has_interface(path: str) -> bool:
    """Like wg's userspace_has_wireguard_interface: a socket file that accepts a connection.

    (wg also unlinks a socket whose daemon is gone; the run directory is shared, so we only skip it.)
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
    return True


def list_interfaces(directory: str | None = None) -> list[str]:
    """Interfaces with a live UAPI socket, in directory order (as wg lists them: it does not sort)."""
    directory = directory or run_dir()
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if len(entry) <= len(SOCK_SUFFIX) or not entry.endswith(SOCK_SUFFIX):
            continue
        name = entry[: -len(SOCK_SUFFIX)]
        if _has_interface(os.path.join(directory, entry)):
            names.append(name)
    return names


def _missing_errno() -> int:
    """What wg reports for an interface with no socket: it then asks the kernel over netlink, which
    answers EPROTONOSUPPORT when the wireguard module is not loaded, ENODEV when it is (no such device)."""
    return errno.ENODEV if os.path.isdir("/sys/module/wireguard") else errno.EPROTONOSUPPORT


def _connect(iface: str, directory: str | None, timeout: float) -> socket.socket:
    path = socket_path(iface, directory)
    if "/" in iface or not iface or not _has_interface(path):
        raise UapiError(_missing_errno())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise UapiError(e.errno or errno.EIO)
    return s


def _exchange(iface: str, request: str, directory: str | None, timeout: float) -> list[str]:
    """Send one request, read the answer through ``errno=N`` and its empty line; return the lines before."""
    with _connect(iface, directory, timeout) as s:
        s.sendall(request.encode())
        buf = b""
        lines: list[str] = []
        code: int | None = None
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                continue
            line, buf = buf[:nl].decode(errors="replace"), buf[nl + 1 :]
            if code is not None:
                if line == "":
                    break
                continue
            if line.startswith("errno="):
                value = line[len("errno="):]
                try:
                    code = int(value)
                except ValueError:
                    raise UapiError(errno.EPROTO)
                continue
            if line == "":
                break
            lines.append(line)
    if code is None:
        raise UapiError(errno.EPROTO)
    if code:
        raise UapiError(code)
    return lines


def parse_get(name: str, lines: Iterable[str]) -> DeviceState:
    """Parse the lines of a ``get=1`` answer (without ``errno``) as wg does."""
    device = DeviceState(name=name)
    peer: PeerState | None = None
    for line in lines:
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(errno.EPROTO, f"malformed UAPI line {line!r}")
        try:
            if peer is None and key == "private_key":
                device.private_key = keys.from_hex(value)
                device.public_key = keys.public_key(device.private_key)
            elif peer is None and key == "listen_port":
                device.listen_port = int(value)
            elif peer is None and key == "fwmark":
                device.fwmark = int(value)
            elif key == "public_key":
                peer = PeerState(public_key=keys.from_hex(value))
                device.peers.append(peer)
            elif peer is not None and key == "preshared_key":
                psk = keys.from_hex(value)
                peer.preshared_key = None if keys.is_zero(psk) else psk
            elif peer is not None and key == "endpoint":
                peer.endpoint = parse_endpoint(value)
            elif peer is not None and key == "persistent_keepalive_interval":
                peer.persistent_keepalive = int(value)
            elif peer is not None and key == "allowed_ip":
                peer.allowed_ips.append(ipaddress.ip_network(value.split("%")[0], strict=False))
            elif peer is not None and key == "last_handshake_time_sec":
                peer.last_handshake = (int(value), peer.last_handshake[1])
            elif peer is not None and key == "last_handshake_time_nsec":
                peer.last_handshake = (peer.last_handshake[0], int(value))
            elif peer is not None and key == "rx_bytes":
                peer.rx_bytes = int(value)
            elif peer is not None and key == "tx_bytes":
                peer.tx_bytes = int(value)
            elif peer is not None and key == "protocol_version":
                peer.protocol_version = int(value)
            # Anything else is ignored, as wg ignores keys it does not know.
        except ValueError:
            raise UapiError(errno.EPROTO, f"malformed UAPI value for {key}")
    return device


def get(iface: str, *, run_dir: str | None = None, timeout: float = 10.0) -> DeviceState:
    """The device's state through ``get=1``. Raises UapiError (ENOENT-like errnos as wg reports them)."""
    return parse_get(iface, _exchange(iface, "get=1\n\n", run_dir, timeout))


def stats(iface: str, *, run_dir: str | None = None, timeout: float = 5.0) -> dict[str, int]:
    """wgpyd's counters (drops by reason, handshakes, cookie replies...) through its ``wgpy_stats=1`` extension.

    Other daemons do not speak it: wireguard-go closes the connection, which surfaces as UapiError/OSError.
    """
    out: dict[str, int] = {}
    for line in _exchange(iface, "wgpy_stats=1\n\n", run_dir, timeout):
        name, eq, value = line.partition("=")
        if eq and value.isdigit():
            out[name] = int(value)
    return out


def set(
    iface: str, request_lines: Iterable[str], *, run_dir: str | None = None, timeout: float = 30.0
) -> None:
    """Send ``set=1`` with `request_lines` (``key=value`` strings); raise UapiError on a non-zero errno."""
    body = "".join(line + "\n" for line in request_lines)
    _exchange(iface, "set=1\n" + body + "\n", run_dir, timeout)


# --- building set requests ---------------------------------------------------------------------------


@dataclass
class PeerChange:
    """One peer section of a ``set=1`` request; None means "leave as is"."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)  # bytes(32) clears it
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[Network] = field(default_factory=list)


@dataclass
class DeviceChange:
    private_key: bytes | None = field(default=None, repr=False)  # bytes(32) clears it
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def request_lines(change: DeviceChange) -> list[str]:
    """The ``set=1`` body for `change`, in the order wg's userspace_set_device writes it."""
    out: list[str] = []
    if change.private_key is not None:
        out.append(f"private_key={keys.to_hex(change.private_key)}")
    if change.listen_port is not None:
        out.append(f"listen_port={change.listen_port}")
    if change.fwmark is not None:
        out.append(f"fwmark={change.fwmark}")
    if change.replace_peers:
        out.append("replace_peers=true")
    for peer in change.peers:
        out.append(f"public_key={keys.to_hex(peer.public_key)}")
        if peer.remove:
            out.append("remove=true")
            continue
        if peer.update_only:
            out.append("update_only=true")
        if peer.preshared_key is not None:
            out.append(f"preshared_key={keys.to_hex(peer.preshared_key)}")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.persistent_keepalive is not None:
            out.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        if peer.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out += [f"allowed_ip={format_network(n)}" for n in peer.allowed_ips]
    return out


def apply(iface: str, change: DeviceChange, *, run_dir: str | None = None) -> None:
    set(iface, request_lines(change), run_dir=run_dir)
