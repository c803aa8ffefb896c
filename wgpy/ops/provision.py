"""Provisioning peers on a server configuration: add, remove, list, import, expire.

The server configuration is edited as *text*, line by line, never re-serialised: every line outside the
peer being added, removed or changed stays byte-for-byte what the operator wrote (comments, ordering,
spacing). After each edit the whole file is parsed again with :func:`wgpy.config.parse`, so a bad edit is an
error before anything is written. wgpy's metadata rides in ``# key = value`` comments that
:mod:`wgpy.config` keeps:

* ``# friendly_name = NAME`` in each ``[Peer]`` (the name the exporter and ``peer list`` show);
* ``# expires = YYYY-MM-DD`` in a ``[Peer]`` (enforced by ``wgpy peer expire``);
* ``# endpoint = host:port``, ``# dns = ...``, ``# routes = ...`` in ``[Interface]`` (what clients are given).

Live application follows ``wg syncconf``: only the peers that differ from the running interface are sent
(:func:`sync_live`), so every other peer keeps its session, endpoint and counters.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.config import Config, PeerConfig
from wgpy.ops.addresses import IPInterface, IPNetwork, allocate
from wgpy.uapi import client as uapi

DEFAULT_DIR = Path(os.environ.get("WGPY_CONFIG_DIR", "/etc/wireguard"))
PLACEHOLDER_PRIVATE_KEY = "REPLACE_WITH_THE_CLIENT_PRIVATE_KEY"
DEFAULT_KEEPALIVE = 25
_HEADER_RE = re.compile(r"^\s*\[\s*(interface|peer)\s*\]\s*(#.*)?$", re.IGNORECASE)
_METADATA_RE = re.compile(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")
P = ParamSpec("P")
R = TypeVar("R")
_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,61}[^\s\x00-\x1f\x7f])?$")


class ProvisionError(Exception):
    """An operator error with a message fit for the terminal (never a key)."""


class Layout(StrEnum):
    ROAD_WARRIOR = "road-warrior"
    HUB_AND_SPOKE = "hub-and-spoke"
    SITE_TO_SITE = "site-to-site"


# ----------------------------------------------------------------------------------------------------
# Where things live


@dataclass(frozen=True)
class Target:
    """A server configuration file and the interface it configures."""

    path: Path
    interface: str

    @property
    def clients_dir(self) -> Path:
        """Issued client configurations: ``/etc/wireguard/wg0.clients/NAME.conf`` beside the server file."""
        return self.path.parent / f"{self.interface}.clients"

    def client_path(self, name: str) -> Path:
        return self.clients_dir / f"{safe_filename(name)}.conf"


def resolve_target(
    target: str | None, config_path: str | None = None, interface: str | None = None
) -> Target:
    """`wg0` means /etc/wireguard/wg0.conf; a path (or --config) is used as is, its stem naming the
    interface."""
    if config_path:
        path = Path(config_path)
        return Target(path, interface or target or path.stem)
    if target is None:
        raise ProvisionError("name the interface (wg0) or the configuration file (--config PATH)")
    if "/" in target or target.endswith(".conf"):
        path = Path(target)
        return Target(path, interface or path.stem)
    return Target(DEFAULT_DIR / f"{target}.conf", interface or target)


def locked(fn: Callable[Concatenate[Target, P], R]) -> Callable[Concatenate[Target, P], R]:
    """Serialise edits of one directory of configurations (a timer's `rotate finish` and an operator's `peer add`
    must not interleave their read-modify-write): an exclusive flock on the directory, held for the call."""

    @functools.wraps(fn)
    def wrapper(target: Target, *args: P.args, **kwargs: P.kwargs) -> R:
        fd = os.open(target.path.parent if str(target.path.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fn(target, *args, **kwargs)
        finally:
            os.close(fd)

    return wrapper


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]", "_", name)


# ----------------------------------------------------------------------------------------------------
# Line-preserving editing


def _line_key(line: str) -> str:
    """The lower-case key of a ``Key = value`` line ('' for comments and blanks), as wg reads it."""
    content = line.partition("#")[0]
    name, equals, _ = content.partition("=")
    return re.sub(r"\s", "", name).lower() if equals else ""


@dataclass
class ConfigText:
    """A configuration as lines (with their endings), edited in place; `parse()` checks the result."""

    lines: list[str]
    path: str = "<config>"

    @classmethod
    def from_text(cls, text: str, path: str = "<config>") -> ConfigText:
        return cls(text.splitlines(keepends=True), path)

    @classmethod
    def load(cls, path: str | Path) -> ConfigText:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProvisionError(f"{path}: no such configuration file") from None
        return cls.from_text(text, str(path))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def parse(self) -> Config:
        return wgconfig.parse(self.text, self.path)

    def save(self, path: str | Path | None = None) -> None:
        self.parse()  # never write a file wg would refuse
        wgconfig.write_private_file(Path(path or self.path), self.text)

    # sections ----------------------------------------
    def _headers(self) -> list[tuple[int, str]]:
        out = []
        for i, line in enumerate(self.lines):
            m = _HEADER_RE.match(line)
            if m:
                out.append((i, m.group(1).lower()))
        return out

    def _section_end(self, start: int) -> int:
        for i, _kind in self._headers():
            if i > start:
                return i
        return len(self.lines)

    def interface_range(self) -> tuple[int, int]:
        for i, kind in self._headers():
            if kind == "interface":
                return i, self._section_end(i)
        raise ProvisionError(f"{self.path}: no [Interface] section")

    def peer_range(self, public_key: bytes) -> tuple[int, int]:
        peer = self.parse().peer(public_key)
        if peer is None:
            raise ProvisionError(f"{self.path}: no peer {keys.to_base64(public_key)}")
        start = peer.line - 1
        return start, self._section_end(start)

    # edits ----------------------------------------
    def append_block(self, block: Sequence[str]) -> None:
        """Append a section after one blank line, leaving every existing byte in place.

        The blank line is added even after a blank line, so that removing the section (which takes the blank
        line before a last section with it) gives back the original bytes."""
        if self.lines and not self.lines[-1].endswith("\n"):
            self.lines[-1] += "\n"
        if self.lines:
            self.lines.append("\n")
        self.lines.extend(line + "\n" for line in block)

    def remove_range(self, start: int, end: int) -> None:
        """Remove lines [start, end); the blank line that separated the section from the previous one goes too
        when the section was the last one, so add-then-remove restores the file exactly."""
        if end == len(self.lines) and start > 0 and not self.lines[start - 1].strip():
            start -= 1
        del self.lines[start:end]

    def remove_peer(self, public_key: bytes) -> None:
        self.remove_range(*self.peer_range(public_key))

    def set_value(
        self, section: tuple[int, int], key: str, value: str | None, *, after: str | None = None
    ) -> None:
        """Set ``Key = value`` in the section (replacing the first such line in place, removing the
        others), or delete it (value None). A new line goes after the `after` key's line, else after the
        last non-blank line of the section."""
        start, end = section
        wanted = key.lower()
        hits = [i for i in range(start + 1, end) if _line_key(self.lines[i]) == wanted]
        if value is None:
            for i in reversed(hits):
                del self.lines[i]
            return
        new_line = f"{key} = {value}\n"
        if hits:
            for i in reversed(hits[1:]):
                del self.lines[i]
            self.lines[hits[0]] = new_line
            return
        self.lines.insert(self._insert_at(start, end, after), new_line)

    def set_metadata(self, section: tuple[int, int], name: str, value: str | None) -> None:
        """Set or remove a ``# name = value`` metadata comment in the section (new ones go right after
        the header, where friendly_name conventionally sits)."""
        start, end = section
        hits = [i for i in range(start + 1, end)
                if (m := _METADATA_RE.match(self.lines[i])) and m.group(1) == name]
        if value is None:
            for i in reversed(hits):
                del self.lines[i]
            return
        new_line = f"# {name} = {value}\n"
        if hits:
            self.lines[hits[0]] = new_line
            for i in reversed(hits[1:]):
                del self.lines[i]
            return
        at = start + 1
        while at < end and (m := _METADATA_RE.match(self.lines[at])) is not None:
            at += 1
        self.lines.insert(at, new_line)

    def _insert_at(self, start: int, end: int, after: str | None) -> int:
        if after is not None:
            for i in range(start + 1, end):
                if _line_key(self.lines[i]) == after.lower():
                    return i + 1
        last = start
        for i in range(start + 1, end):
            if self.lines[i].strip():
                last = i
        if not self.lines[last].endswith("\n"):
            self.lines[last] += "\n"
        return last + 1


# ----------------------------------------------------------------------------------------------------
# Server facts


def server_public_key(cfg: Config) -> bytes:
    if cfg.interface.private_key is None:
        raise ProvisionError(f"{cfg.path}: the [Interface] has no PrivateKey")
    return keys.public_key(cfg.interface.private_key)


def server_subnets(cfg: Config) -> list[IPNetwork]:
    return [a.network for a in cfg.interface.addresses]


def find_peer(cfg: Config, who: str) -> PeerConfig:
    """A peer by friendly name or base64 public key."""
    for p in cfg.peers:
        if p.friendly_name == who or keys.to_base64(p.public_key) == who:
            return p
    raise ProvisionError(f"{cfg.path}: no peer named {who!r}")


def peer_label(peer: PeerConfig) -> str:
    return peer.friendly_name or keys.to_base64(peer.public_key)


def parse_networks(items: Iterable[str]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part:
                try:
                    out.append(ipaddress.ip_network(part, strict=False))
                except ValueError:
                    raise ProvisionError(f"not a network: {part!r}") from None
    return out


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ProvisionError(f"not a date (YYYY-MM-DD): {value!r}") from None


# ----------------------------------------------------------------------------------------------------
# Adding a peer


@dataclass
class AddRequest:
    name: str
    layout: Layout = Layout.ROAD_WARRIOR
    endpoint: str | None = None
    public_key: bytes | None = None  # brought by the client: no client private key on this host
    psk: bool = True
    dns: list[str] | None = None  # None: the server's "# dns" metadata; [] : none
    routes: list[IPNetwork] = field(default_factory=list)  # site-to-site: the client's subnets
    server_routes: list[IPNetwork] | None = None  # site-to-site: subnets behind the server
    expires: dt.date | None = None
    keepalive: int | None = DEFAULT_KEEPALIVE
    addresses: list[IPInterface] | None = None  # explicit; default: next free in every server subnet
    output: Path | None = None  # the client configuration; default Target.client_path(name)


@dataclass
class AddResult:
    peer: PeerConfig
    client_path: Path
    client_text: str
    client_private_key: bytes | None = field(repr=False)
    server_text: str
    forwarding_added: bool = False  # PostUp forwarding lines were added (they run at the next `up`)


def _endpoint_for(cfg: Config, request: AddRequest) -> str:
    endpoint = request.endpoint or cfg.interface.metadata.get("endpoint")
    if not endpoint:
        raise ProvisionError(
            "the clients need the server's public address: pass --endpoint HOST:PORT "
            "(it is remembered as '# endpoint = ...' in the server's [Interface])"
        )
    try:
        wgconfig.check_endpoint(endpoint)
    except ValueError as e:
        raise ProvisionError(str(e)) from None
    return endpoint


def client_allowed_ips(cfg: Config, layout: Layout, server_routes: Sequence[IPNetwork]) -> list[str]:
    """What the client sends into the tunnel."""
    if layout is Layout.ROAD_WARRIOR:
        return ["0.0.0.0/0", "::/0"]
    nets = [*server_subnets(cfg), *(server_routes if layout is Layout.SITE_TO_SITE else ())]
    return [str(n) for n in dict.fromkeys(nets)]


def build_client_config(
    *, name: str, interface: str, private_key: bytes | None, addresses: Sequence[IPInterface],
    dns: Sequence[str], server_key: bytes, psk: bytes | None, allowed_ips: Sequence[str], endpoint: str,
    keepalive: int | None,
) -> str:
    lines = ["[Interface]", f"# friendly_name = {name}", f"# server_interface = {interface}"]
    if private_key is None:
        lines.append("# This host never saw the client's private key: put it in place of the placeholder.")
        lines.append(f"PrivateKey = {PLACEHOLDER_PRIVATE_KEY}")
    else:
        lines.append(f"PrivateKey = {keys.to_base64(private_key)}")
    lines.append("Address = " + ", ".join(str(a) for a in addresses))
    if dns:
        lines.append("DNS = " + ", ".join(dns))
    lines += ["", "[Peer]", f"PublicKey = {keys.to_base64(server_key)}"]
    if psk is not None:
        lines.append(f"PresharedKey = {keys.to_base64(psk)}")
    lines.append("AllowedIPs = " + ", ".join(allowed_ips))
    lines.append(f"Endpoint = {endpoint}")
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")
    return "\n".join(lines) + "\n"


FORWARDING_NOTE = "# wgpy: hub-and-spoke/site-to-site peers reach each other through this host: it forwards"
FORWARDING_V4 = "sysctl -q -w net.ipv4.ip_forward=1"
FORWARDING_V6 = "sysctl -q -w net.ipv6.conf.all.forwarding=1"


def ensure_forwarding(text: ConfigText, cfg: Config) -> bool:
    """Add PostUp lines turning on forwarding (once), for layouts where this host routes between peers."""
    wanted = [FORWARDING_V4] if any(a.version == 4 for a in cfg.interface.addresses) else []
    if any(a.version == 6 for a in cfg.interface.addresses):
        wanted.append(FORWARDING_V6)
    missing = [cmd for cmd in wanted if cmd not in cfg.interface.post_up]
    if not missing:
        return False
    start, end = text.interface_range()
    at = text._insert_at(start, end, None)
    new = [] if any(line.startswith(FORWARDING_NOTE) for line in text.lines) else [FORWARDING_NOTE + "\n"]
    new += [f"PostUp = {cmd}\n" for cmd in missing]
    text.lines[at:at] = new
    return True


@locked
def add_peer(target: Target, request: AddRequest) -> AddResult:
    """Append a peer to the server configuration and write it and the client's configuration (0600).

    Does not touch the running interface: :func:`sync_live` does that."""
    if not _NAME_RE.match(request.name):
        raise ProvisionError(f"a peer name is 1-63 printable characters, no outer spaces: {request.name!r}")
    text = ConfigText.load(target.path)
    cfg = text.parse()
    if any(p.friendly_name == request.name for p in cfg.peers):
        raise ProvisionError(f"{target.path}: a peer named {request.name!r} exists already")
    if not cfg.interface.addresses:
        raise ProvisionError(f"{target.path}: the [Interface] has no Address: nothing to allocate from")
    server_key = server_public_key(cfg)
    endpoint = _endpoint_for(cfg, request)

    if request.public_key is not None:
        client_private, client_public = None, request.public_key
    else:
        client_private = keys.generate_private_key()
        client_public = keys.public_key(client_private)
    if cfg.peer(client_public) is not None or client_public == server_key:
        raise ProvisionError(f"{target.path}: that public key is in use already")
    psk = keys.generate_preshared_key() if request.psk else None

    taken = [n for p in cfg.peers for n in p.allowed_ips]
    addresses = request.addresses or allocate(cfg.interface.addresses, taken)
    for route in request.routes:
        if any(route.overlaps(n) for n in taken if n.version == route.version):
            raise ProvisionError(f"{route} overlaps another peer's AllowedIPs")
    # The server routes to the client exactly its own host addresses (and, site-to-site, its subnets): one
    # client can never claim another's traffic.
    server_allowed = [ipaddress.ip_network(a.ip) for a in addresses] + list(request.routes)

    block = ["[Peer]", f"# friendly_name = {request.name}"]
    if request.expires is not None:
        block.append(f"# expires = {request.expires.isoformat()}")
    block.append(f"PublicKey = {keys.to_base64(client_public)}")
    if psk is not None:
        block.append(f"PresharedKey = {keys.to_base64(psk)}")
    block.append("AllowedIPs = " + ", ".join(str(n) for n in server_allowed))

    if request.endpoint and cfg.interface.metadata.get("endpoint") != request.endpoint:
        text.set_metadata(text.interface_range(), "endpoint", request.endpoint)
    forwarding_added = False
    if request.layout in (Layout.HUB_AND_SPOKE, Layout.SITE_TO_SITE):
        forwarding_added = ensure_forwarding(text, cfg)
    server_routes = request.server_routes
    if server_routes is None:
        server_routes = parse_networks([cfg.interface.metadata.get("routes", "")])
    elif request.layout is Layout.SITE_TO_SITE and server_routes:
        text.set_metadata(text.interface_range(), "routes", ", ".join(str(n) for n in server_routes))
    text.append_block(block)
    new_cfg = text.parse()
    peer = new_cfg.peer(client_public)
    assert peer is not None

    if request.dns is not None:
        dns = list(request.dns)
    elif request.layout is Layout.ROAD_WARRIOR:
        meta = cfg.interface.metadata.get("dns")
        dns = [d.strip() for d in meta.split(",")] if meta else [str(a.ip) for a in cfg.interface.addresses]
    else:
        dns = []
    client_text = build_client_config(
        name=request.name, interface=target.interface, private_key=client_private, addresses=addresses,
        dns=dns,
        server_key=server_key, psk=psk, allowed_ips=client_allowed_ips(cfg, request.layout, server_routes),
        endpoint=endpoint, keepalive=request.keepalive,
    )
    client_path = request.output or target.client_path(request.name)
    text.save(target.path)
    wgconfig.write_private_file(client_path, client_text)
    return AddResult(
        peer=peer, client_path=client_path, client_text=client_text, client_private_key=client_private,
        server_text=text.text, forwarding_added=forwarding_added,
    )


@locked
def remove_peer(target: Target, who: str) -> PeerConfig:
    text = ConfigText.load(target.path)
    peer = find_peer(text.parse(), who)
    text.remove_peer(peer.public_key)
    text.save(target.path)
    return peer


# ----------------------------------------------------------------------------------------------------
# Import


def wide_allowed_ips(cfg: Config) -> list[str]:
    """Warnings for peers whose AllowedIPs cover more of a tunnel subnet than one host address: such a peer
    can claim (and receive) other clients' traffic. Routed subnets outside the tunnel subnets are fine."""
    warnings = []
    subnets = server_subnets(cfg)
    for peer in cfg.peers:
        for net in peer.allowed_ips:
            if net.prefixlen == net.max_prefixlen:
                continue
            for subnet in subnets:
                if subnet.version == net.version and net.overlaps(subnet):
                    warnings.append(f"peer {peer_label(peer)!r} has {net}, more than one address of the tunnel "
                                    f"subnet {subnet}: narrow it to its own /{net.max_prefixlen}")
                    break
    return warnings


_PLAIN_COMMENT_RE = re.compile(r"^\s*#\s*(\S.*?)\s*$")


def import_config(source: str | Path, target: Target) -> list[str]:
    """Take an existing configuration under management: returns the names given to the peers.

    Every line is kept; a peer gets a ``# friendly_name`` from the plain comment right after its ``[Peer]``
    header (the prometheus_wireguard_exporter's older convention) or, failing that, ``peerN``.
    """
    text = ConfigText.load(source)
    cfg = text.parse()
    if cfg.interface.private_key is None:
        raise ProvisionError(f"{source}: the [Interface] has no PrivateKey: not a server configuration")
    if target.path.exists():
        raise ProvisionError(f"{target.path} exists already; remove it or choose another --config")
    used = {p.friendly_name for p in cfg.peers if p.friendly_name}
    # First pick names in file order, then edit from the bottom up so earlier line numbers stay valid.
    plans: list[tuple[PeerConfig, str, bool]] = []
    for n, peer in enumerate(cfg.peers, start=1):
        if peer.friendly_name:
            plans.append((peer, peer.friendly_name, False))
            continue
        start = peer.line - 1
        nxt = text.lines[start + 1] if start + 1 < len(text.lines) else ""
        m = _PLAIN_COMMENT_RE.match(nxt)
        if m and not _METADATA_RE.match(nxt) and _NAME_RE.match(m.group(1)) and m.group(1) not in used:
            name, from_comment = m.group(1), True
        else:
            name, from_comment = f"peer{n}", False
            while name in used:
                name += "_"
        used.add(name)
        plans.append((peer, name, from_comment))
    for peer, name, from_comment in reversed(plans):
        if peer.friendly_name:
            continue
        start = peer.line - 1
        if from_comment:
            del text.lines[start + 1]
        text.set_metadata((start, text._section_end(start)), "friendly_name", name)
    names = [name for _peer, name, _c in plans]
    text.path = str(target.path)
    text.save(target.path)
    return names


# ----------------------------------------------------------------------------------------------------
# Applying to the running interface, with `wg syncconf` semantics


def interface_running(interface: str) -> bool:
    return interface in uapi.list_interfaces()


def _resolve(endpoint: str) -> uapi.Endpoint:
    try:
        return wgconfig.resolve_endpoint(endpoint)
    except ValueError as e:
        raise ProvisionError(str(e)) from None


def live_diff(cfg: Config, state: uapi.DeviceState) -> uapi.DeviceChange:
    """The smallest ``set=1`` that makes the device match `cfg` (what `wg syncconf` sends).

    Peers that already match are left out entirely, so their sessions, endpoints and counters are
    untouched; a peer that changed is sent in full with ``replace_allowed_ips`` (wireguard-go and wgpyd keep
    its session).
    """
    change = uapi.DeviceChange()
    iface = cfg.interface
    if iface.private_key is not None and iface.private_key != state.private_key:
        change.private_key = iface.private_key
    if iface.listen_port is not None and iface.listen_port != state.listen_port:
        change.listen_port = iface.listen_port
    if iface.fwmark is not None and iface.fwmark != state.fwmark:
        change.fwmark = iface.fwmark
    live = {p.public_key: p for p in state.peers}
    wanted = {p.public_key for p in cfg.peers}
    for pub, _peer in live.items():
        if pub not in wanted:
            change.peers.append(uapi.PeerChange(public_key=pub, remove=True))
    for peer in cfg.peers:
        current = live.get(peer.public_key)
        psk = peer.preshared_key
        endpoint = _resolve(peer.endpoint) if peer.endpoint else None
        keepalive = peer.persistent_keepalive or 0
        if current is not None and (
            current.preshared_key == psk
            and (endpoint is None or current.endpoint == endpoint)
            and current.persistent_keepalive == keepalive
            and sorted(map(str, current.allowed_ips)) == sorted(map(str, peer.allowed_ips))
        ):
            continue
        change.peers.append(uapi.PeerChange(
            public_key=peer.public_key,
            preshared_key=psk if psk is not None else bytes(32),
            endpoint=endpoint if current is None or endpoint != current.endpoint else None,
            persistent_keepalive=keepalive,
            replace_allowed_ips=True,
            allowed_ips=list(peer.allowed_ips),
        ))
    return change


def sync_live(interface: str, cfg: Config) -> uapi.DeviceChange | None:
    """Apply `cfg` to the running interface in one UAPI request; None when the interface is not running."""
    if not interface_running(interface):
        return None
    change = live_diff(cfg, uapi.get(interface))
    if change.peers or change.private_key is not None or change.listen_port is not None \
            or change.fwmark is not None:
        uapi.apply(interface, change)
    return change
