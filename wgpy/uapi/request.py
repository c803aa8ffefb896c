"""Parse one UAPI request into a validated, immutable list of operations.

A ``set=1`` request is validated completely before anything is applied (see :mod:`wgpy.uapi.apply`): wireguard-go
applies each line as it reads it, so a bad value on line 20 leaves lines 1-19 applied; wgpy refuses the whole
request instead and changes nothing.

The accepted syntax and the errno of every refusal were measured against Debian's wireguard-go 0.0.20220316:

- every bad key or value answers ``errno=-22`` (-EINVAL); a line without ``=`` answers ``errno=-71`` (-EPROTO);
- numbers are decimal without sign (Go's ``strconv.ParseUint``), leading zeros allowed; listen_port and
  persistent_keepalive_interval fit 16 bits, fwmark 32 bits;
- keys are exactly 64 hex digits, either case; an all-zero private or preshared key clears it; any other private
  key is clamped (RFC 7748) as both wireguard-go and Linux store it, so ``get`` shows the clamped key;
- booleans (``replace_peers``, ``remove``, ``update_only``, ``replace_allowed_ips``) accept only ``true``;
- an endpoint is ``a.b.c.d:port`` or ``[v6]:port`` with an IP literal (no host names, no leading zeros in IPv4
  octets, an IPv6 zone is accepted and dropped), port 0-65535;
- an allowed IP is ``address/len``; host bits may be set (they are masked off);
- device keys are accepted only before the first ``public_key``; after it every key belongs to a peer section.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Final

from wgpy.protocol.constants import KEY_LEN

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Endpoint = tuple[str, int]

# wireguard-go's IPC error codes (ipc/uapi_*.go): negative errno values.
EINVAL: Final = -errno.EINVAL
EPROTO: Final = -errno.EPROTO
EIO: Final = -errno.EIO
EADDRINUSE: Final = -errno.EADDRINUSE
EPERM: Final = -errno.EPERM


class UapiError(Exception):
    """A refused request: ``code`` is the (negative) errno the response carries. The message never holds a key."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- operations ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetPrivateKey:
    key: bytes | None  # None: clear (the request sent 64 zeros)

    def __repr__(self) -> str:  # never show a private key
        return f"SetPrivateKey({'clear' if self.key is None else '<redacted>'})"


@dataclass(frozen=True, slots=True)
class SetListenPort:
    port: int


@dataclass(frozen=True, slots=True)
class SetFwmark:
    mark: int  # 0 clears


@dataclass(frozen=True, slots=True)
class ReplacePeers:
    pass


@dataclass(frozen=True, slots=True)
class RemovePeer:
    pass


@dataclass(frozen=True, slots=True)
class UpdateOnly:
    pass


@dataclass(frozen=True, slots=True)
class SetPresharedKey:
    key: bytes | None  # None: clear

    def __repr__(self) -> str:
        return f"SetPresharedKey({'clear' if self.key is None else '<redacted>'})"


@dataclass(frozen=True, slots=True)
class SetEndpoint:
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class SetPersistentKeepalive:
    seconds: int


@dataclass(frozen=True, slots=True)
class ReplaceAllowedIPs:
    pass


@dataclass(frozen=True, slots=True)
class AddAllowedIP:
    network: Network


PeerOp = (
    RemovePeer | UpdateOnly | SetPresharedKey | SetEndpoint | SetPersistentKeepalive | ReplaceAllowedIPs | AddAllowedIP
)
DeviceOp = SetPrivateKey | SetListenPort | SetFwmark | ReplacePeers


@dataclass(frozen=True, slots=True)
class PeerSection:
    """Everything between one ``public_key=`` line and the next (or the end), in request order."""

    public_key: bytes
    ops: tuple[PeerOp, ...]

    @property
    def update_only(self) -> bool:
        return any(isinstance(op, UpdateOnly) for op in self.ops)


@dataclass(frozen=True, slots=True)
class GetRequest:
    pass


@dataclass(frozen=True, slots=True)
class SetRequest:
    device: tuple[DeviceOp, ...]
    peers: tuple[PeerSection, ...]


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """wgpy's extension ``wgpy_stats=1``: the Device's drop and event counters as ``name=value`` lines.

    ``wg`` rejects unknown keys in a ``get=1`` answer, so the counters cannot go there; ``wg`` never sends this
    operation, so it cannot confuse ``wg``. wireguard-go hangs up on it without an answer (an unknown operation),
    which is how a client tells a wgpy daemon from another one.
    """


Request = GetRequest | SetRequest | StatsRequest

OPERATIONS: Final = {"get=1": GetRequest, "set=1": SetRequest, "wgpy_stats=1": StatsRequest}


# --- value parsers ---------------------------------------------------------------------------------------------


def parse_uint(value: str, bits: int, what: str) -> int:
    """Go's ``strconv.ParseUint(value, 10, bits)``: ASCII decimal digits only, no sign, no underscores."""
    if not value or not value.isascii() or not value.isdigit():
        raise UapiError(EINVAL, f"failed to parse {what}: invalid syntax")
    number = int(value)
    if number >= 1 << bits:
        raise UapiError(EINVAL, f"failed to parse {what}: value out of range")
    return number


_HEX: Final = frozenset("0123456789abcdefABCDEF")


def parse_key(value: str, what: str) -> bytes:
    """Exactly 64 hex digits, either case. The value is never echoed: it may be a private key."""
    if len(value) != 2 * KEY_LEN or not _HEX.issuperset(value):
        raise UapiError(EINVAL, f"failed to set {what}: not {2 * KEY_LEN} hex digits")
    return bytes.fromhex(value)


def clamp(private: bytes) -> bytes:
    """RFC 7748 clamping, as wireguard-go's ``FromMaybeZeroHex`` applies it to a non-zero private key."""
    key = bytearray(private)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def parse_bool_true(value: str, what: str) -> None:
    if value != "true":
        raise UapiError(EINVAL, f"failed to set {what}, invalid value: {value[:64]!r}")


def parse_endpoint(value: str) -> Endpoint:
    """``a.b.c.d:port`` or ``[v6(%zone)]:port`` as Go's ``netip.ParseAddrPort``; canonical host text out."""
    bad = UapiError(EINVAL, f"failed to set endpoint {value[:80]!r}: not an ip:port")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise bad
    if host.startswith("["):
        if not host.endswith("]"):
            raise bad
        host = host[1:-1]
        host = host.partition("%")[0]  # the zone is accepted and dropped, as wireguard-go prints it
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host)
        except ValueError:
            raise bad
    else:
        try:
            address = ipaddress.IPv4Address(host)  # rejects leading zeros, like Go's netip
        except ValueError:
            raise bad
    try:
        port = parse_uint(port_text, 16, "endpoint port")
    except UapiError:
        raise bad
    return (str(address), port)


def parse_network(value: str) -> Network:
    """``address/len`` with host bits allowed (masked off), as wireguard-go inserts it into its trie."""
    bad = UapiError(EINVAL, f"failed to set allowed ip: {value[:80]!r}")
    address_text, sep, length_text = value.partition("/")
    if not sep:
        raise bad
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv6Address(address_text) if ":" in address_text else ipaddress.IPv4Address(address_text)
        )
        max_length = address.max_prefixlen
        length = parse_uint(length_text, 8, "prefix length")
    except (ValueError, UapiError):
        raise bad
    if length > max_length:
        raise bad
    return ipaddress.ip_network(f"{address}/{length}", strict=False)


# --- requests --------------------------------------------------------------------------------------------------


def split_line(line: str) -> tuple[str, str]:
    key, sep, value = line.partition("=")
    if not sep:
        raise UapiError(EPROTO, f"failed to parse line {line[:64]!r}")
    return key, value


def parse_set(lines: list[str]) -> SetRequest:
    """The body of a ``set=1`` request (the lines after ``set=1``, without the final empty line)."""
    device_ops: list[DeviceOp] = []
    sections: list[PeerSection] = []
    current_key: bytes | None = None
    current_ops: list[PeerOp] = []

    def close_section() -> None:
        if current_key is not None:
            sections.append(PeerSection(current_key, tuple(current_ops)))

    for line in lines:
        key, value = split_line(line)
        if key == "public_key":
            close_section()
            current_key = parse_key(value, "public_key")
            current_ops = []
            continue
        if current_key is None:
            if key == "private_key":
                private = parse_key(value, "private_key")
                device_ops.append(SetPrivateKey(None if private == bytes(KEY_LEN) else clamp(private)))
            elif key == "listen_port":
                device_ops.append(SetListenPort(parse_uint(value, 16, "listen_port")))
            elif key == "fwmark":
                device_ops.append(SetFwmark(parse_uint(value, 32, "fwmark")))
            elif key == "replace_peers":
                parse_bool_true(value, "replace_peers")
                device_ops.append(ReplacePeers())
            else:
                raise UapiError(EINVAL, f"invalid UAPI device key: {key[:64]!r}")
            continue
        if key == "remove":
            parse_bool_true(value, "remove")
            current_ops.append(RemovePeer())
        elif key == "update_only":
            parse_bool_true(value, "update only")
            current_ops.append(UpdateOnly())
        elif key == "preshared_key":
            psk = parse_key(value, "preshared_key")
            current_ops.append(SetPresharedKey(None if psk == bytes(KEY_LEN) else psk))
        elif key == "endpoint":
            current_ops.append(SetEndpoint(parse_endpoint(value)))
        elif key == "persistent_keepalive_interval":
            current_ops.append(SetPersistentKeepalive(parse_uint(value, 16, "persistent keepalive interval")))
        elif key == "replace_allowed_ips":
            parse_bool_true(value, "replace_allowed_ips")
            current_ops.append(ReplaceAllowedIPs())
        elif key == "allowed_ip":
            current_ops.append(AddAllowedIP(parse_network(value)))
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"invalid protocol version: {value[:16]!r}")
        else:
            raise UapiError(EINVAL, f"invalid UAPI peer key: {key[:64]!r}")
    close_section()
    return SetRequest(tuple(device_ops), tuple(sections))


def parse_request(operation: str, lines: list[str]) -> Request:
    """``operation`` is the first line (``get=1``, ``set=1`` or ``wgpy_stats=1``); ``lines`` the rest.

    Raises :class:`UapiError` for a refused request. An unknown operation is a :class:`KeyError`: wireguard-go
    closes the connection without an answer then, and so does the server.
    """
    kind = OPERATIONS[operation]
    if kind is SetRequest:
        return parse_set(lines)
    if lines:
        raise UapiError(EINVAL, f"trailing lines in UAPI {operation.partition('=')[0]}")
    return kind()
