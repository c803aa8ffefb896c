"""wg and wg-quick configuration files: parse and write, with wg's semantics and precise errors.

Parsing follows wireguard-tools' ``config.c`` (what `wg setconf` accepts) plus the keys `wg-quick`
strips before handing the rest to wg (Address, DNS, MTU, Table, PreUp/PostUp/PreDown/PostDown, SaveConfig):

* ``#`` starts a comment anywhere on a line; for wg's own keys every whitespace character in the line is
  removed before matching (so ``Private Key = ...`` is accepted, like wg); sections and keys are
  case-insensitive.
* A key outside a section, or a key that does not belong to its section, is an error ("Line unrecognized").
* Repeated interface keys: the last one wins (as in wg). AllowedIPs lines accumulate. Address, DNS and the
  hooks accumulate (as in wg-quick).
* Where wgpy is stricter than wg: a peer whose public key was already seen is an error naming both lines (wg
  would silently merge the two sections), and nothing here resolves host names: endpoints are kept as
  written and checked for form; :func:`resolve_endpoint` resolves them when a command is about to use them.

Comments of the form ``# key = value`` inside a section are metadata that wgpy keeps across rewrites (the
``friendly_name`` of a peer, used by `wgpy show` and the ops tools, is one of them). Other comments are
dropped when a file is rewritten.

Every problem raises one :class:`ConfigError` naming the file, the line and what is wrong, and never a key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from wgpy import keys

Network = IPv4Network | IPv6Network
Interface = IPv4Interface | IPv6Interface

#: wg-quick's own keys, in the order `wg-quick save` writes them.
WG_QUICK_KEYS = ("address", "dns", "mtu", "table", "saveconfig", "preup", "postup", "predown", "postdown")
_INTERFACE_KEYS = ("listenport", "fwmark", "privatekey")
_PEER_KEYS = ("endpoint", "publickey", "allowedips", "persistentkeepalive", "presharedkey")
_METADATA_RE = re.compile(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")
_WHITESPACE_RE = re.compile(r"[ \t\n\v\f\r]")


class ConfigError(Exception):
    """A configuration problem at one line of one file (line 0: the file as a whole)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(path, line, message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: str | None = None
    allowed_ips: list[Network] = field(default_factory=list)
    persistent_keepalive: int | None = None
    friendly_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    line: int = field(default=0, compare=False)

    @property
    def extra_comments(self) -> dict[str, str]:
        """Alias of :attr:`metadata`: the ``# key = value`` comments other than friendly_name."""
        return self.metadata


@dataclass
class InterfaceConfig:
    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int | None = None
    fwmark: int | None = None
    addresses: list[Interface] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: list[PeerConfig] = field(default_factory=list)
    path: str | None = None

    def peer(self, public_key: bytes) -> PeerConfig | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None


# ----------------------------------------------------------------------------------------------------
# Value parsers shared with `wgpy set` (they raise ValueError with wg's wording; callers add file and line).


def parse_port(value: str) -> int:
    """ListenPort / listen-port: a number 0-65535 or a UDP service name (wg asks getaddrinfo for either).

    Deliberately stricter than wg: glibc's getaddrinfo accepts any decimal number and truncates it to 16
    bits, so `wg set wg0 listen-port 99999` silently listens on 34463. wgpy refuses numbers above 65535.
    """
    if not value:
        raise ValueError("Unable to parse empty port")
    if value.isdigit() and value.isascii():
        port = int(value)
        if port <= 65535:
            return port
        raise ValueError(f"Servname not supported for ai_socktype: `{value}'")
    try:
        return socket.getservbyname(value, "udp")
    except OSError:
        raise ValueError(f"Servname not supported for ai_socktype: `{value}'")


def _strtoul_digits(value: str, base: int) -> int | None:
    digits = value[2:] if base == 16 else value
    try:
        return int(digits, base) if digits and digits.isascii() and digits.isalnum() else None
    except ValueError:
        return None


def parse_fwmark(value: str) -> int:
    """FwMark: ``off`` or 0-0xffffffff, decimal or 0x-hex (wg's parse_fwmark)."""
    if value.lower() == "off":
        return 0
    mark = None
    if value[:1].isdigit() and value[:1].isascii():
        base = 16 if len(value) > 2 and value.startswith("0x") else 10
        mark = _strtoul_digits(value, base)
    if mark is None or mark > 0xFFFFFFFF:
        raise ValueError(f"Fwmark is neither 0/off nor 0-0xffffffff: `{value}'")
    return mark


def parse_persistent_keepalive(value: str) -> int:
    if value.lower() == "off":
        return 0
    seconds = None
    if value[:1].isdigit() and value[:1].isascii():
        seconds = _strtoul_digits(value, 10)
    if seconds is None or seconds > 65535:
        raise ValueError(f"Persistent keepalive interval is neither 0/off nor 1-65535: `{value}'")
    return seconds


def parse_allowed_ips(value: str, warn: Callable[[str], object] | None = None) -> list[Network]:
    """A comma-separated list of ``ip[/cidr]`` (no whitespace: callers strip it, like wg). Empty: no IPs.

    Host bits are cleared, as the kernel and wireguard-go do when they store the prefix; `warn` gets wg's
    warning about them.
    """
    if not value:
        return []
    result: list[Network] = []
    for entry in value.split(","):
        ip_text, slash, cidr_text = entry.partition("/")
        try:
            address = ipaddress.ip_address(ip_text)
        except ValueError:
            raise ValueError(f"Unable to parse IP address: `{ip_text}'")
        if (":" in ip_text) != (address.version == 6):
            raise ValueError(f"Unable to parse IP address: `{ip_text}'")
        if "%" in ip_text:
            raise ValueError(f"Unable to parse IP address: `{ip_text}'")
        if slash:
            cidr = _strtoul_digits(cidr_text, 10) if cidr_text[:1].isdigit() else None
            if cidr is None or cidr > address.max_prefixlen:
                raise ValueError(f"AllowedIP is not in the correct format: `{entry}'")
        else:
            cidr = address.max_prefixlen
        network = ipaddress.ip_network(f"{address}/{cidr}", strict=False)
        if warn is not None and network.network_address != address:
            warn(f"Warning: AllowedIP has nonzero host part: {ip_text}/{cidr_text}\n")
        result.append(network)
    return result


def split_endpoint(value: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port`` into host and port text the way wg's parse_endpoint does."""
    if not value:
        raise ValueError("Unable to parse empty endpoint")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"Unable to find matching brace of endpoint: `{value}'")
        host, rest = value[1:end], value[end + 1 :]
        if not rest.startswith(":") or len(rest) < 2:
            raise ValueError(f"Unable to find port of endpoint: `{value}'")
        return host, rest[1:]
    host, colon, port = value.rpartition(":")
    if not colon or not port:
        raise ValueError(f"Unable to find port of endpoint: `{value}'")
    return host, port


def check_endpoint(value: str) -> None:
    """Check the form of an endpoint without resolving it: host part present, port a valid port."""
    host, port = split_endpoint(value)
    parse_port(port)
    if not host:
        raise ValueError(f"Unable to parse empty endpoint host: `{value}'")


def _resolution_retries() -> int:
    """WG_ENDPOINT_RESOLUTION_RETRIES as wg reads it: a count, or "infinity" (-1); 15 by default."""
    value = os.environ.get("WG_ENDPOINT_RESOLUTION_RETRIES")
    if value is None:
        return 15
    if value == "infinity":
        return -1
    if not (value.isascii() and value.isdigit()) or int(value) > 2**31 - 1:
        raise ValueError(f"Unable to parse WG_ENDPOINT_RESOLUTION_RETRIES: `{value}'")
    return int(value)


# getaddrinfo failures that no retry will fix (glibc's NameResolver notes, as wg's parse_endpoint uses them).
_PERMANENT_GAI = {socket.EAI_NONAME, socket.EAI_FAIL, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def resolve_endpoint(endpoint: str, log: Callable[[str], object] | None = None) -> tuple[str, int]:
    """Resolve an endpoint like wg: getaddrinfo(AF_UNSPEC, UDP) and the first result wins.

    Returns the canonical textual address (IPv6 compressed, no brackets) and the port. Transient failures
    (no network yet at boot) are retried like wg, WG_ENDPOINT_RESOLUTION_RETRIES times (default 15) with a
    growing pause, each announced through `log`. Raises ValueError with wg's wording on failure.
    """
    host, port = split_endpoint(endpoint)
    retries = _resolution_retries()
    pause = 1.0
    while True:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            break
        except socket.gaierror as e:
            if e.errno in _PERMANENT_GAI or retries == 0:
                raise ValueError(f"{e.strerror}: `{endpoint}'")
            retries -= 1 if retries > 0 else 0
            if log is not None:
                log(f"{e.strerror}: `{endpoint}'. Trying again in {pause:.2f} seconds...\n")
            time.sleep(pause)
            pause = min(20.0, pause * 6 / 5)
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = str(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
            return address, int(sockaddr[1])
        break
    raise ValueError(f"Neither IPv4 nor IPv6 address found: `{endpoint}'")


# ----------------------------------------------------------------------------------------------------
# Parsing


def _key(value: str, what: str) -> bytes:
    try:
        return keys.from_base64(value)
    except keys.InvalidKeyError:
        raise ValueError(
            f"{what} is not the correct length or format (a key is 44 base64 characters ending in '=')"
        )


def _parse_bool(value: str) -> bool:
    low = value.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise ValueError(f"`{value}' is neither true nor false")


def parse(
    text: str, path: str = "<stdin>", *, wg_quick: bool = True, warn: Callable[[str], object] | None = None
) -> Config:
    """Parse a configuration. `wg_quick=False`: wg-quick's keys are errors, as with `wg setconf`.

    `warn` receives wg's warnings (an AllowedIP with host bits set), which are not errors."""
    config = Config(path=path)
    section: str | None = None
    peer: PeerConfig | None = None
    seen_peers: dict[bytes, int] = {}
    iface = config.interface

    def finish_peer() -> None:
        if peer is None:
            return
        if not peer.public_key:
            raise ConfigError(path, peer.line, "A peer is missing a public key")
        first = seen_peers.get(peer.public_key)
        if first is not None:
            raise ConfigError(
                path, peer.line,
                f"duplicate peer {keys.to_base64(peer.public_key)}: "
                f"already defined in the [Peer] at line {first}",
            )
        seen_peers[peer.public_key] = peer.line
        config.peers.append(peer)

    for number, raw in enumerate(text.splitlines(), start=1):
        content, _hash, _comment = raw.partition("#")
        cleaned = _WHITESPACE_RE.sub("", content)
        if not cleaned:
            match = _METADATA_RE.match(raw) if not content.strip() else None
            if match and section is not None:
                name, value = match.group(1), match.group(2)
                if section == "peer" and peer is not None:
                    if name == "friendly_name":
                        peer.friendly_name = value
                    else:
                        peer.metadata[name] = value
                elif section == "interface":
                    iface.metadata[name] = value
            continue
        low = cleaned.lower()
        if low == "[interface]":
            finish_peer()
            peer = None
            section = "interface"
            continue
        if low == "[peer]":
            finish_peer()
            peer = PeerConfig(public_key=b"", line=number)
            section = "peer"
            continue
        name, equals, raw_value = content.partition("=")
        key = _WHITESPACE_RE.sub("", name).lower()
        value = _WHITESPACE_RE.sub("", raw_value)
        try:
            if not equals:
                raise ValueError("Line unrecognized: neither a [Section] header nor a Key = Value line")
            if section is None:
                raise ValueError(f"Line unrecognized: {_key_name(name)} outside any [Interface] or [Peer] section")
            if section == "interface" and key in _INTERFACE_KEYS and value:
                if key == "listenport":
                    iface.listen_port = parse_port(value)
                elif key == "fwmark":
                    iface.fwmark = parse_fwmark(value)
                else:
                    iface.private_key = _key(value, "PrivateKey")
            elif section == "interface" and wg_quick and key in WG_QUICK_KEYS:
                _parse_wg_quick_key(iface, key, raw_value.strip(), value)
            elif section == "peer" and key in _PEER_KEYS and value:
                assert peer is not None
                if key == "publickey":
                    peer.public_key = _key(value, "PublicKey")
                elif key == "presharedkey":
                    peer.preshared_key = _key(value, "PresharedKey")
                elif key == "endpoint":
                    check_endpoint(value)
                    peer.endpoint = value
                elif key == "allowedips":
                    peer.allowed_ips.extend(parse_allowed_ips(value, warn))
                else:
                    peer.persistent_keepalive = parse_persistent_keepalive(value)
            else:
                known = _INTERFACE_KEYS + WG_QUICK_KEYS if section == "interface" else _PEER_KEYS
                if key in known and not value:
                    raise ValueError(f"{_key_name(name)} has no value")
                where = "[Interface]" if section == "interface" else "[Peer]"
                hint = " (a wg-quick key: use wgpy up, or strip it)" if key in WG_QUICK_KEYS else ""
                raise ValueError(f"Line unrecognized: unknown key {_key_name(name)} in {where}{hint}")
        except ValueError as e:
            raise ConfigError(path, number, str(e)) from None
    finish_peer()
    return config


def _key_name(name: str) -> str:
    """A key name for an error message. Values are never echoed (they may be keys); a long unknown name may
    be a pasted key that happens to end in '=', so only short names are repeated."""
    name = _WHITESPACE_RE.sub("", name)
    return f"`{name}'" if len(name) <= 24 else "(a long unknown name)"


def _parse_wg_quick_key(iface: InterfaceConfig, key: str, stripped: str, compact: str) -> None:
    if key in ("preup", "postup", "predown", "postdown"):
        if not stripped:
            raise ValueError(f"{key} has no value")
        hooks = {"preup": iface.pre_up, "postup": iface.post_up, "predown": iface.pre_down,
                 "postdown": iface.post_down}
        hooks[key].append(stripped)
        return
    if not compact:
        raise ValueError(f"{key} has no value")
    if key == "address":
        for item in compact.split(","):
            if not item:
                continue
            try:
                iface.addresses.append(ipaddress.ip_interface(item))
            except ValueError:
                raise ValueError(f"Address is not an IP address with an optional /prefix: `{item}'")
    elif key == "dns":
        for item in compact.split(","):
            if not item:
                continue
            try:
                iface.dns.append(str(ipaddress.ip_address(item)))
            except ValueError:
                iface.dns_search.append(item)
    elif key == "mtu":
        if not (compact.isascii() and compact.isdigit()) or not 0 < int(compact) <= 65535:
            raise ValueError(f"MTU is not a number from 1 to 65535: `{compact}'")
        iface.mtu = int(compact)
    elif key == "table":
        iface.table = compact
    elif key == "saveconfig":
        iface.save_config = _parse_bool(compact)


def load(path: str, *, wg_quick: bool = True, warn: Callable[[str], object] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, 0, f"cannot read the file: {e.strerror or e}")
    except UnicodeDecodeError as e:
        line = text_line_of(path, e.start)
        raise ConfigError(path, line, "the file is not valid UTF-8 text")
    return parse(text, path, wg_quick=wg_quick, warn=warn)


def text_line_of(path: str, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            return f.read(offset).count(b"\n") + 1
    except OSError:
        return 0


# ----------------------------------------------------------------------------------------------------
# Writing


def dumps(config: Config, *, wg_quick: bool = True) -> str:
    """Write a configuration in the layout of `wg showconf` (and, with wg_quick, of `wg-quick save`)."""
    iface = config.interface
    out = ["[Interface]"]
    if wg_quick:
        out += [f"Address = {a}" for a in iface.addresses]
        out += [f"DNS = {d}" for d in (*iface.dns, *iface.dns_search)]
        if iface.mtu is not None:
            out.append(f"MTU = {iface.mtu}")
        if iface.table is not None:
            out.append(f"Table = {iface.table}")
        if iface.save_config:
            out.append("SaveConfig = true")
        for label, cmds in (("PreUp", iface.pre_up), ("PostUp", iface.post_up), ("PreDown", iface.pre_down),
                            ("PostDown", iface.post_down)):
            out += [f"{label} = {c}" for c in cmds]
    out += [f"# {k} = {v}" for k, v in iface.metadata.items()]
    if iface.listen_port is not None:
        out.append(f"ListenPort = {iface.listen_port}")
    if iface.fwmark is not None:
        out.append(f"FwMark = 0x{iface.fwmark:x}" if iface.fwmark else "FwMark = off")
    if iface.private_key is not None:
        out.append(f"PrivateKey = {keys.to_base64(iface.private_key)}")
    for peer in config.peers:
        out += ["", "[Peer]"]
        if peer.friendly_name is not None:
            out.append(f"# friendly_name = {peer.friendly_name}")
        out += [f"# {k} = {v}" for k, v in peer.metadata.items()]
        out.append(f"PublicKey = {keys.to_base64(peer.public_key)}")
        if peer.preshared_key is not None:
            out.append(f"PresharedKey = {keys.to_base64(peer.preshared_key)}")
        if peer.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.endpoint is not None:
            out.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive is not None:
            out.append(f"PersistentKeepalive = {peer.persistent_keepalive or 'off'}")
    return "\n".join(out) + "\n"


def dump(config: Config, path: str, *, wg_quick: bool = True) -> None:
    """Write `config` to `path` with mode 0600 (it holds a private key), replacing it atomically."""
    write_private_file(path, dumps(config, wg_quick=wg_quick))


def write_private_file(path: str | os.PathLike[str], text: str) -> None:
    """Write a file that holds keys: mode 0600 from its first byte, flushed to disk, then renamed into place, so
    a reader sees the old or the new content and never a torn or world-readable one. A missing parent directory
    is created 0700."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".wgpy-", dir=directory)  # mkstemp creates the file 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
