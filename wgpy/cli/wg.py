"""`wgpy genkey|genpsk|pubkey|set|setconf|addconf|syncconf`: wireguard-tools' behaviour, wgpy's errors.

Output and exit codes follow Debian's `wg`. Where wg reports a config mistake as a bare message plus
"Configuration parsing error", wgpy prints one line ``FILE:LINE: what is wrong`` (see :mod:`wgpy.config`);
nothing is sent to the device unless the whole file parsed and every endpoint resolved.
Every command takes ``argv`` with the subcommand name first, as wg's subcommand functions do.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import BinaryIO, TextIO

from wgpy import config, keys
from wgpy.config import Config, ConfigError
from wgpy.ops.audit import AuditError, AuditLog, record_changes, view_of_state
from wgpy.uapi import client
from wgpy.uapi.client import DeviceChange, PeerChange

PROG_NAME = "wgpy"
_SPACE = b" \t\n\v\f\r"

SET_USAGE = (
    "Usage: {prog} {cmd} <interface> [listen-port <port>] [fwmark <mark>] [private-key <file path>] "
    "[peer <base64 public key> [remove] [preshared-key <file path>] [endpoint <ip>:<port>] "
    "[persistent-keepalive <interval seconds>] [allowed-ips <ip1>/<cidr1>[,<ip2>/<cidr2>]...] ]...\n"
)


# --- keys -----------------------------------------------------------------------------------------------



def apply_audited(iface: str, change: client.DeviceChange) -> None:
    """Send `change`; with an audit log (WGPY_AUDIT_LOG), record what it changed on the device, as the CLI."""
    try:
        audit = AuditLog.from_env()
    except AuditError as e:
        raise OSError(errno.EINVAL, f"audit log: {e}") from None
    if audit is None:
        client.apply(iface, change)
        return
    with audit:
        before = view_of_state(client.get(iface))
        client.apply(iface, change)
        record_changes(audit, "cli", iface, before, view_of_state(client.get(iface)))

def genkey_main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """genkey and genpsk (wg's genkey.c serves both)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if len(argv) != 1:
        err.write(f"Usage: {PROG_NAME} {argv[0]}\n")
        return 1
    try:
        st = os.fstat(out.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IRWXO:
            err.write("Warning: writing to world accessible file.\n"
                      "Consider setting the umask to 077 and trying again.\n")
    except (OSError, AttributeError, ValueError):
        pass
    key = keys.generate_private_key() if argv[0] == "genkey" else keys.generate_preshared_key()
    out.write(keys.to_base64(key) + "\n")
    out.flush()
    return 0


def pubkey_main(argv: list[str], stdin: BinaryIO | None = None, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin.buffer
    out = out or sys.stdout
    err = err or sys.stderr
    if len(argv) != 1:
        err.write(f"Usage: {PROG_NAME} {argv[0]}\n")
        return 1
    head = b""
    while len(head) < keys.KEY_LEN_BASE64:
        chunk = stdin.read(keys.KEY_LEN_BASE64 - len(head))
        if not chunk:
            break
        head += chunk
    if len(head) != keys.KEY_LEN_BASE64:
        err.write(f"{PROG_NAME}: Key is not the correct length or format\n")
        return 1
    while True:
        c = stdin.read(1)
        if not c:
            break
        if c == b"\0" or c in _SPACE:
            continue
        err.write(f"{PROG_NAME}: Trailing characters found after key\n")
        return 1
    try:
        private = keys.from_base64(head.decode("latin-1"))
    except keys.InvalidKeyError:
        err.write(f"{PROG_NAME}: Key is not the correct length or format\n")
        return 1
    out.write(keys.to_base64(keys.public_key(private)) + "\n")
    out.flush()
    return 0


def read_key_file(path: str) -> bytes:
    """wg's parse_keyfile: 44 base64 characters then only whitespace; an empty file means "no key" (zeros)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"fopen: {os.strerror(e.errno) if e.errno else e}")
    if len(data) < keys.KEY_LEN_BASE64:
        if not data:
            return bytes(keys.KEY_LEN)
        raise ValueError("Invalid length key in key file")
    for byte in data[keys.KEY_LEN_BASE64:]:
        if bytes([byte]) not in _SPACE:
            raise ValueError(f"Found trailing character in key file: `{chr(byte)}'")
    try:
        return keys.from_base64(data[: keys.KEY_LEN_BASE64].decode("latin-1"))
    except keys.InvalidKeyError:
        raise ValueError("Key is not the correct length or format")


# --- set ------------------------------------------------------------------------------------------------


def _resolve(value: str) -> client.Endpoint:
    return config.resolve_endpoint(value, log=sys.stderr.write)


def parse_set_args(args: list[str]) -> DeviceChange:
    """wg's config_read_cmd: the arguments after the interface name. Raises ValueError with wg's wording."""
    change = DeviceChange()
    peer: PeerChange | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        has_value = i + 1 < len(args)
        value = args[i + 1] if has_value else ""
        if arg == "listen-port" and has_value and peer is None:
            change.listen_port = config.parse_port(value)
        elif arg == "fwmark" and has_value and peer is None:
            change.fwmark = config.parse_fwmark(value)
        elif arg == "private-key" and has_value and peer is None:
            change.private_key = read_key_file(value)
        elif arg == "peer" and has_value:
            try:
                public = keys.from_base64(value)
            except keys.InvalidKeyError:
                raise ValueError(f"Key is not the correct length or format: `{value}'")
            peer = PeerChange(public_key=public)
            change.peers.append(peer)
        elif arg == "remove" and peer is not None:
            peer.remove = True
            i += 1
            continue
        elif arg == "endpoint" and has_value and peer is not None:
            peer.endpoint = _resolve(value)
        elif arg == "allowed-ips" and has_value and peer is not None:
            compact = "".join(c for c in value if c not in " \t\n\v\f\r")
            peer.replace_allowed_ips = True
            peer.allowed_ips.extend(config.parse_allowed_ips(compact, warn=sys.stderr.write))
        elif arg == "persistent-keepalive" and has_value and peer is not None:
            peer.persistent_keepalive = config.parse_persistent_keepalive(value)
        elif arg == "preshared-key" and has_value and peer is not None:
            peer.preshared_key = read_key_file(value)
        else:
            raise ValueError(f"Invalid argument: {arg}")
        i += 2
    return change


def set_main(argv: list[str], err: TextIO | None = None) -> int:
    err = err or sys.stderr
    if len(argv) < 3:
        err.write(SET_USAGE.format(prog=PROG_NAME, cmd=argv[0]))
        return 1
    try:
        change = parse_set_args(argv[2:])
    except ValueError as e:
        err.write(f"{e}\n")
        return 1
    try:
        apply_audited(argv[1], change)
    except OSError as e:
        err.write(f"Unable to modify interface: {os.strerror(e.errno) if e.errno else e}\n")
        return 1
    return 0


# --- setconf / addconf / syncconf ----------------------------------------------------------------------------


def change_from_config(conf: Config, *, append: bool) -> DeviceChange:
    """The device change `wg setconf` (append=False) or `wg addconf` (append=True) sends for `conf`.

    Endpoints are resolved here; a failure is a ConfigError at the peer's line, before anything is sent.
    """
    iface = conf.interface
    path = conf.path or "<stdin>"
    if append:
        change = DeviceChange(private_key=iface.private_key, listen_port=iface.listen_port, fwmark=iface.fwmark)
    else:
        change = DeviceChange(
            private_key=iface.private_key if iface.private_key is not None else bytes(keys.KEY_LEN),
            listen_port=iface.listen_port or 0,
            fwmark=iface.fwmark or 0,
            replace_peers=True,
        )
    for peer in conf.peers:
        endpoint = None
        if peer.endpoint is not None:
            try:
                endpoint = config.resolve_endpoint(peer.endpoint, log=sys.stderr.write)
            except ValueError as e:
                raise ConfigError(path, peer.line, f"Endpoint of this peer: {e}")
        change.peers.append(PeerChange(
            public_key=peer.public_key,
            preshared_key=peer.preshared_key,
            endpoint=endpoint,
            persistent_keepalive=peer.persistent_keepalive,
            replace_allowed_ips=True,
            allowed_ips=list(peer.allowed_ips),
        ))
    return change


def sync_change(change: DeviceChange, runtime: client.DeviceState) -> None:
    """wg's sync_conf: remove runtime peers absent from the file, keep the others (their sessions live on).

    A peer in both keeps its session because it is updated in place, never removed and re-added; a preshared
    key or persistent keepalive the file no longer sets is cleared explicitly. That last step is current
    wireguard-tools' behaviour; Debian's wg 1.0.20210914 predates it and leaves the old values in place, so a
    device synced with it does not match its file. wgpy makes the device match the file.
    """
    if not change.peers or not runtime.peers:
        return
    change.replace_peers = False
    in_file = {p.public_key: p for p in change.peers}
    removals: list[PeerChange] = []
    for current in sorted(runtime.peers, key=lambda p: p.public_key):
        wanted = in_file.get(current.public_key)
        if wanted is None:
            removals.insert(0, PeerChange(public_key=current.public_key, remove=True))
            continue
        if current.preshared_key is not None and wanted.preshared_key is None:
            wanted.preshared_key = bytes(keys.KEY_LEN)
        if current.persistent_keepalive and wanted.persistent_keepalive is None:
            wanted.persistent_keepalive = 0
    change.peers = removals + change.peers


def setconf_main(argv: list[str], err: TextIO | None = None) -> int:
    err = err or sys.stderr
    command = argv[0]
    if len(argv) != 3:
        err.write(f"Usage: {PROG_NAME} {command} <interface> <configuration filename>\n")
        return 1
    iface, path = argv[1], argv[2]
    try:
        conf = config.load(path, wg_quick=False, warn=err.write)
        change = change_from_config(conf, append=command == "addconf")
    except ConfigError as e:
        err.write(f"{e}\n")
        return 1
    if command == "syncconf" and change.peers:
        try:
            runtime = client.get(iface)
        except OSError as e:
            err.write("Unable to retrieve current interface configuration: "
                      f"{os.strerror(e.errno) if e.errno else e}\n")
            return 1
        sync_change(change, runtime)
    try:
        apply_audited(iface, change)
    except OSError as e:
        err.write(f"Unable to modify interface: {os.strerror(e.errno) if e.errno else e}\n")
        return 1
    return 0
