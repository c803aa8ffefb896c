"""`wgpy show` and `wgpy showconf`: the output of wireguard-tools' show.c and showconf.c, byte for byte.

Beyond wg: ``--json`` prints the same state as JSON. Like the pretty output it hides private and preshared keys
(``"(hidden)"``) unless ``WG_HIDE_KEYS=never``; ``show IFACE dump --json`` holds every key, as ``dump`` does, and
:func:`from_json` reads either back into :class:`~wgpy.uapi.client.DeviceState` objects.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from wgpy import keys
from wgpy.cli.terminal import BOLD, FG_CYAN, FG_GREEN, FG_RED, FG_YELLOW, RESET, Terminal
from wgpy.uapi import client
from wgpy.uapi.client import DeviceState, PeerState

PROG_NAME = "wgpy"
HIDDEN = "(hidden)"
FIELDS = ("public-key", "private-key", "listen-port", "fwmark", "peers", "preshared-keys", "endpoints",
          "allowed-ips", "latest-handshakes", "transfer", "persistent-keepalive", "dump")


def show_usage(command: str, err: TextIO) -> None:
    err.write(f"Usage: {PROG_NAME} {command} {{ <interface> | all | interfaces }} "
              f"[{' | '.join(FIELDS)}]\n")


# --- wg's formatting helpers ------------------------------------------------------------------------------


def _key(key: bytes) -> str:
    return keys.to_base64(key)


def _maybe_key(key: bytes | None) -> str:
    return "(none)" if key is None else _key(key)


def _masked_key(key: bytes) -> str:
    return _key(key) if os.environ.get("WG_HIDE_KEYS") == "never" else HIDDEN


def _plural(n: int, unit: str) -> str:
    return f"{n} {FG_CYAN}{unit}{'' if n == 1 else 's'}{RESET}"


def pretty_time(left: int) -> str:
    """'1 year, 2 days, 3 minutes, 1 second' with wg's colour codes; empty for 0."""
    years, left = divmod(left, 365 * 24 * 60 * 60)
    days, left = divmod(left, 24 * 60 * 60)
    hours, left = divmod(left, 60 * 60)
    minutes, seconds = divmod(left, 60)
    parts = [_plural(n, unit) for n, unit in ((years, "year"), (days, "day"), (hours, "hour"),
                                              (minutes, "minute"), (seconds, "second")) if n]
    return ", ".join(parts)


def ago(seconds: int, now: int | None = None) -> str:
    now = int(time.time()) if now is None else now
    if now == seconds:
        return "Now"
    if now < seconds:
        return f"({FG_RED}System clock wound backward; connection problems may ensue.{RESET})"
    return pretty_time(now - seconds) + " ago"


def every(seconds: int) -> str:
    return "every " + pretty_time(seconds)


def human_bytes(b: int) -> str:
    if b < 1024:
        return f"{b} {FG_CYAN}B{RESET}"
    for limit, divisor, unit in ((1024**2, 1024, "KiB"), (1024**3, 1024**2, "MiB"), (1024**4, 1024**3, "GiB")):
        if b < limit:
            return f"{b / divisor:.2f} {FG_CYAN}{unit}{RESET}"
    return f"{b / 1024**3 / 1024:.2f} {FG_CYAN}TiB{RESET}"


def _endpoint(peer: PeerState) -> str:
    assert peer.endpoint is not None
    return client.format_endpoint(peer.endpoint)


def sort_peers(peers: list[PeerState]) -> list[PeerState]:
    """wg's peer_cmp: most recent handshake first, peers that never had one last (stable)."""
    return sorted(peers, key=lambda p: (p.last_handshake == (0, 0), -p.last_handshake[0], -p.last_handshake[1]))


# --- the three printers -------------------------------------------------------------------------------------


def pretty_print(device: DeviceState, term: Terminal, now: int | None = None) -> None:
    p = term.printf
    p(RESET)
    p(f"{FG_GREEN}{BOLD}interface{RESET}: {FG_GREEN}{device.name}{RESET}\n")
    if device.public_key is not None:
        p(f"  {BOLD}public key{RESET}: {_key(device.public_key)}\n")
    if device.private_key is not None:
        p(f"  {BOLD}private key{RESET}: {_masked_key(device.private_key)}\n")
    if device.listen_port:
        p(f"  {BOLD}listening port{RESET}: {device.listen_port}\n")
    if device.fwmark:
        p(f"  {BOLD}fwmark{RESET}: 0x{device.fwmark:x}\n")
    peers = sort_peers(device.peers)
    if peers:
        p("\n")
    for index, peer in enumerate(peers):
        p(f"{FG_YELLOW}{BOLD}peer{RESET}: {FG_YELLOW}{_key(peer.public_key)}{RESET}\n")
        if peer.preshared_key is not None:
            p(f"  {BOLD}preshared key{RESET}: {_masked_key(peer.preshared_key)}\n")
        if peer.endpoint is not None:
            p(f"  {BOLD}endpoint{RESET}: {_endpoint(peer)}\n")
        p(f"  {BOLD}allowed ips{RESET}: ")
        if peer.allowed_ips:
            last = len(peer.allowed_ips) - 1
            for i, network in enumerate(peer.allowed_ips):
                address, _, cidr = client.format_network(network).partition("/")
                p(f"{address}{FG_CYAN}/{RESET}{cidr}{', ' if i < last else chr(10)}")
        else:
            p("(none)\n")
        if peer.last_handshake[0]:
            p(f"  {BOLD}latest handshake{RESET}: {ago(peer.last_handshake[0], now)}\n")
        if peer.rx_bytes or peer.tx_bytes:
            p(f"  {BOLD}transfer{RESET}: ")
            p(f"{human_bytes(peer.rx_bytes)} received, ")
            p(f"{human_bytes(peer.tx_bytes)} sent\n")
        if peer.persistent_keepalive:
            p(f"  {BOLD}persistent keepalive{RESET}: {every(peer.persistent_keepalive)}\n")
        if index < len(peers) - 1:
            p("\n")


def _allowed_ips(peer: PeerState, sep: str, end: str) -> str:
    if not peer.allowed_ips:
        return "(none)" + end
    return sep.join(client.format_network(n) for n in peer.allowed_ips) + end


def dump_lines(device: DeviceState, with_interface: bool) -> str:
    prefix = f"{device.name}\t" if with_interface else ""
    out = [
        f"{prefix}{_maybe_key(device.private_key)}\t{_maybe_key(device.public_key)}\t{device.listen_port}\t"
        f"{f'0x{device.fwmark:x}' if device.fwmark else 'off'}\n"
    ]
    for peer in device.peers:
        out.append(
            f"{prefix}{_key(peer.public_key)}\t{_maybe_key(peer.preshared_key)}\t"
            f"{_endpoint(peer) if peer.endpoint else '(none)'}\t{_allowed_ips(peer, ',', chr(9))}"
            f"{peer.last_handshake[0]}\t{peer.rx_bytes}\t{peer.tx_bytes}\t"
            f"{peer.persistent_keepalive or 'off'}\n"
        )
    return "".join(out)


def ugly_print(device: DeviceState, param: str, with_interface: bool, out: TextIO, err: TextIO,
               command: str = "show") -> bool:
    prefix = f"{device.name}\t" if with_interface else ""
    peers = device.peers
    if param == "public-key":
        out.write(f"{prefix}{_maybe_key(device.public_key)}\n")
    elif param == "private-key":
        out.write(f"{prefix}{_maybe_key(device.private_key)}\n")
    elif param == "listen-port":
        out.write(f"{prefix}{device.listen_port}\n")
    elif param == "fwmark":
        out.write(f"{prefix}{f'0x{device.fwmark:x}' if device.fwmark else 'off'}\n")
    elif param == "endpoints":
        # wireguard-tools v1.0.20210914 (Debian's) prints the interface name once, before the loop, not on
        # every line as for the other fields: reproduced, including a dangling "NAME\t" when there are no peers.
        out.write(prefix)
        for peer in peers:
            out.write(f"{_key(peer.public_key)}\t{_endpoint(peer) if peer.endpoint else '(none)'}\n")
    elif param == "allowed-ips":
        for peer in peers:
            out.write(f"{prefix}{_key(peer.public_key)}\t{_allowed_ips(peer, ' ', chr(10))}")
    elif param == "latest-handshakes":
        for peer in peers:
            out.write(f"{prefix}{_key(peer.public_key)}\t{peer.last_handshake[0]}\n")
    elif param == "transfer":
        for peer in peers:
            out.write(f"{prefix}{_key(peer.public_key)}\t{peer.rx_bytes}\t{peer.tx_bytes}\n")
    elif param == "persistent-keepalive":
        for peer in peers:
            out.write(f"{prefix}{_key(peer.public_key)}\t{peer.persistent_keepalive or 'off'}\n")
    elif param == "preshared-keys":
        for peer in peers:
            out.write(f"{prefix}{_key(peer.public_key)}\t{_maybe_key(peer.preshared_key)}\n")
    elif param == "peers":
        for peer in peers:
            out.write(f"{prefix}{_key(peer.public_key)}\n")
    elif param == "dump":
        out.write(dump_lines(device, with_interface))
    else:
        err.write(f"Invalid parameter: `{param}'\n")
        show_usage(command, err)
        return False
    return True


def showconf_text(device: DeviceState) -> str:
    """showconf.c's output."""
    out = ["[Interface]\n"]
    if device.listen_port:
        out.append(f"ListenPort = {device.listen_port}\n")
    if device.fwmark:
        out.append(f"FwMark = 0x{device.fwmark:x}\n")
    if device.private_key is not None:
        out.append(f"PrivateKey = {_key(device.private_key)}\n")
    out.append("\n")
    for index, peer in enumerate(device.peers):
        out.append(f"[Peer]\nPublicKey = {_key(peer.public_key)}\n")
        if peer.preshared_key is not None:
            out.append(f"PresharedKey = {_key(peer.preshared_key)}\n")
        if peer.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(client.format_network(n) for n in peer.allowed_ips) + "\n")
        if peer.endpoint is not None:
            out.append(f"Endpoint = {_endpoint(peer)}\n")
        if peer.persistent_keepalive:
            out.append(f"PersistentKeepalive = {peer.persistent_keepalive}\n")
        if index < len(device.peers) - 1:
            out.append("\n")
    return "".join(out)


# --- JSON ---------------------------------------------------------------------------------------------------


def to_json_obj(device: DeviceState, hide_keys: bool) -> dict[str, Any]:
    def secret(key: bytes | None) -> str | None:
        if key is None:
            return None
        return HIDDEN if hide_keys else _key(key)

    return {
        "interface": device.name,
        "private_key": secret(device.private_key),
        "public_key": None if device.public_key is None else _key(device.public_key),
        "listen_port": device.listen_port,
        "fwmark": device.fwmark,
        "peers": [
            {
                "public_key": _key(peer.public_key),
                "preshared_key": secret(peer.preshared_key),
                "endpoint": None if peer.endpoint is None else _endpoint(peer),
                "allowed_ips": [client.format_network(n) for n in peer.allowed_ips],
                "latest_handshake": peer.last_handshake[0],
                "latest_handshake_nsec": peer.last_handshake[1],
                "transfer_rx": peer.rx_bytes,
                "transfer_tx": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive,
                "protocol_version": peer.protocol_version,
            }
            for peer in device.peers
        ],
    }


def from_json(text: str) -> list[DeviceState]:
    """Read `wgpy show ... --json` output back. Hidden keys cannot be restored: they become None."""
    import ipaddress

    data = json.loads(text)
    items = data if isinstance(data, list) else [data]

    def secret(value: str | None) -> bytes | None:
        return None if value in (None, HIDDEN) else keys.from_base64(str(value))

    devices = []
    for item in items:
        device = DeviceState(
            name=item["interface"],
            private_key=secret(item["private_key"]),
            public_key=None if item["public_key"] is None else keys.from_base64(item["public_key"]),
            listen_port=int(item["listen_port"]),
            fwmark=int(item["fwmark"]),
        )
        for p in item["peers"]:
            device.peers.append(PeerState(
                public_key=keys.from_base64(p["public_key"]),
                preshared_key=secret(p["preshared_key"]),
                endpoint=None if p["endpoint"] is None else client.parse_endpoint(p["endpoint"]),
                last_handshake=(int(p["latest_handshake"]), int(p["latest_handshake_nsec"])),
                tx_bytes=int(p["transfer_tx"]),
                rx_bytes=int(p["transfer_rx"]),
                persistent_keepalive=int(p["persistent_keepalive"]),
                allowed_ips=[ipaddress.ip_network(n) for n in p["allowed_ips"]],
                protocol_version=int(p.get("protocol_version", 1)),
            ))
        devices.append(device)
    return devices


# --- entry points ---------------------------------------------------------------------------------------------


def _access_error(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)


def show_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`show` as wg's show_main; argv[0] is the command name. ``--json`` anywhere selects JSON output."""
    out = out or sys.stdout
    err = err or sys.stderr
    command = argv[0]
    args = argv[1:]
    as_json = "--json" in args
    if as_json:
        args = [a for a in args if a != "--json"]
    argc = len(args) + 1
    if argc > 3:
        show_usage(command, err)
        return 1
    term = Terminal(out)
    if as_json:
        return _show_json(args, command, out, err)
    ret = 0
    if argc == 1 or args[0] == "all":
        interfaces = client.list_interfaces()
        ret = 1 if interfaces else 0
        for index, name in enumerate(interfaces):
            try:
                device = client.get(name)
            except OSError as e:
                err.write(f"Unable to access interface {name}: {_access_error(e)}\n")
                continue
            if argc == 3:
                if not ugly_print(device, args[1], True, out, err, command):
                    ret = 1
                    break
            else:
                pretty_print(device, term)
                if index < len(interfaces) - 1:
                    out.write("\n")
            ret = 0
    elif args[0] == "interfaces":
        if argc > 2:
            show_usage(command, err)
            return 1
        interfaces = client.list_interfaces()
        if interfaces:
            out.write(" ".join(interfaces) + "\n")
    elif argc == 2 and args[0] in ("-h", "--help", "help"):
        show_usage(command, err)
    else:
        try:
            device = client.get(args[0])
        except OSError as e:
            err.write(f"Unable to access interface: {_access_error(e)}\n")
            return 1
        if argc == 3:
            if not ugly_print(device, args[1], False, out, err, command):
                ret = 1
        else:
            pretty_print(device, term)
    out.flush()
    return ret


def _show_json(args: list[str], command: str, out: TextIO, err: TextIO) -> int:
    full = len(args) == 2 and args[1] == "dump"
    if len(args) == 2 and not full:
        err.write(f"Invalid parameter with --json: `{args[1]}' (only dump)\n")
        return 1
    hide = not full and os.environ.get("WG_HIDE_KEYS") != "never"
    if not args or args[0] == "all":
        devices = []
        for name in client.list_interfaces():
            try:
                devices.append(to_json_obj(client.get(name), hide))
            except OSError as e:
                err.write(f"Unable to access interface {name}: {_access_error(e)}\n")
        out.write(json.dumps(devices, indent=2) + "\n")
        return 0
    if args[0] == "interfaces":
        out.write(json.dumps(client.list_interfaces()) + "\n")
        return 0
    try:
        device = client.get(args[0])
    except OSError as e:
        err.write(f"Unable to access interface: {_access_error(e)}\n")
        return 1
    out.write(json.dumps(to_json_obj(device, hide), indent=2) + "\n")
    return 0


def showconf_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if len(argv) != 2:
        err.write(f"Usage: {PROG_NAME} {argv[0]} <interface>\n")
        return 1
    try:
        device = client.get(argv[1])
    except OSError as e:
        err.write(f"Unable to access interface: {_access_error(e)}\n")
        return 1
    out.write(showconf_text(device))
    out.flush()
    return 0
