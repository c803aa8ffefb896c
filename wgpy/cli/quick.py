"""`wgpy up|down|save|strip CONFIG_FILE|INTERFACE`: wg-quick(8), in Python, for userspace daemons.

The steps, their order, their messages and the kernel state they leave are those of Debian's `/usr/bin/wg-quick`
(the spec), so that `wgpy up` and `wg-quick up` on the same file give the same addresses, routes, rules and MTU
(the tests compare them). What differs, and why:

* The interface is always made by the userspace daemon `$WG_QUICK_USERSPACE_IMPLEMENTATION` (default `wgpyd`),
  never by the kernel module: the UAPI socket is how wgpy configures a device.
* Everything `wg-quick` does with `ip` goes through rtnetlink (:mod:`wgpy.netlink`); what it does with `wg`
  goes through the UAPI client; the configuration is parsed by :mod:`wgpy.config` (errors name file and line).
* `up` records what it did, step by step, in ``/var/run/wgpy/IFACE.json``; `down` — and `up` itself when a
  step fails half-way — undoes exactly that (its rules, firewall tables, DNS entry, the link, and the daemon
  process, by the PID the UAPI socket reports). With no record, `down` falls back to wg-quick's own discovery.
* With neither nft nor iptables-restore installed, the anti-spoofing firewall rules of a full tunnel are
  skipped with a warning (wg-quick would fail the whole `up`).

Like wg-quick, `src_valid_mark` is set for full IPv4 tunnels; unlike wg-quick, `down` puts back the value it
found, unless another full tunnel in the namespace still needs it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from wgpy import config as configlib
from wgpy import netlink
from wgpy.cli import show, wg
from wgpy.config import Config, ConfigError
from wgpy.netlink import Netlink, NetlinkError, Network, Rule
from wgpy.uapi import client
from wgpy.uapi.client import DeviceChange

PROGRAM = "wgpy"
DEFAULT_IMPLEMENTATION = "wgpyd"
STATE_DIR_DEFAULT = "/var/run/wgpy"
IFACE_RE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
CONFIG_RE = re.compile(r"(^|/)([a-zA-Z0-9_=+.-]{1,15})\.conf$")
FIRST_AUTO_TABLE = 51820
DAEMON_EXIT_WAIT = 5.0
RT_TABLES_FILES = ("/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables")
RESOLVCONF_ORDER = "/etc/resolvconf/interface-order"

USAGE = """\
Usage: {prog} [ up | down | save | strip ] [ CONFIG_FILE | INTERFACE ]

  CONFIG_FILE is a configuration file, whose filename is the interface name
  followed by `.conf'. Otherwise, INTERFACE is an interface name, with
  configuration found at /etc/wireguard/INTERFACE.conf. It is to be readable
  by wg(8)'s `setconf' sub-command, with the exception of the following additions
  to the [Interface] section, which are handled by {prog}:

  - Address: may be specified one or more times and contains one or more
    IP addresses (with an optional CIDR mask) to be set for the interface.
  - DNS: an optional DNS server to use while the device is up.
  - MTU: an optional MTU for the interface; if unspecified, auto-calculated.
  - Table: an optional routing table to which routes will be added; if
    unspecified or `auto', the default table is used. If `off', no routes
    are added.
  - PreUp, PostUp, PreDown, PostDown: script snippets which will be executed
    by bash(1) at the corresponding phases of the link, most commonly used
    to configure DNS. The string `%i' is expanded to INTERFACE.
  - SaveConfig: if set to `true', the configuration is saved from the current
    state of the interface upon shutdown.

The interface is created by $WG_QUICK_USERSPACE_IMPLEMENTATION (default: wgpyd).
See wg-quick(8) for more info and examples.
"""


class QuickError(Exception):
    """Ends the command with one line on stderr (`wgpy: message`) and exit status 1."""


class _Terminated(BaseException):
    """SIGTERM/SIGHUP during `up`: unwind through the clean-up like wg-quick's trap does."""


def _log(text: str) -> None:
    sys.stderr.write(f"[#] {text}\n")
    sys.stderr.flush()


def _die(message: str) -> NoReturn:
    raise QuickError(message)


# --- the configuration file ----------------------------------------------------------------------------------


@dataclass
class QuickConfig:
    path: str  # resolved, as wg-quick's readlink -f
    interface: str
    config: Config
    stripped: str  # what `strip` prints: wg-quick's WG_CONFIG followed by echo's newline


_WG_QUICK_KEYS = {"address", "mtu", "dns", "table", "preup", "predown", "postup", "postdown", "saveconfig"}
_IFS = " \t\n"
_SPACE = " \t\n\v\f\r"


def strip_text(text: str) -> str:
    """wg-quick's line filter, byte for byte: the lines `wg setconf` gets, then echo's newline.

    `read -r line` trims leading and trailing blanks; the key is what precedes the first `=` of the part before
    any `#`; the nine wg-quick keys of [Interface] sections are dropped (case-insensitively), everything else —
    comments and blank lines included — is kept.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    kept: list[str] = []
    interface_section = False
    for raw in lines:
        line = raw.replace("\0", "").strip(_IFS)
        stripped = line.split("#", 1)[0]
        key = stripped.split("=", 1)[0].strip(_SPACE).lower()
        if key.startswith("["):
            interface_section = False
        if key == "[interface]":
            interface_section = True
        if interface_section and key in _WG_QUICK_KEYS:
            continue
        kept.append(line + "\n")
    return "".join(kept) + "\n"


def parse_options(arg: str, *, warn: bool = True, validate: bool = True) -> QuickConfig:
    """wg-quick's parse_options: find the file, check its name, warn when it is world accessible, parse it.

    `validate=False` (strip) only filters the lines, as wg-quick does: wg would judge the rest later.
    """
    path = arg
    if IFACE_RE.match(path):
        path = f"/etc/wireguard/{path}.conf"
    if not os.path.exists(path):
        _die(f"`{path}' does not exist")
    match = CONFIG_RE.search(path)
    if not match:
        _die("The config file must be a valid interface name, followed by .conf")
    interface = match.group(2)
    path = os.path.realpath(path)
    try:
        file_mode = os.stat(path).st_mode
        dir_mode = os.stat(os.path.dirname(path)).st_mode
    except OSError as e:
        _die(f"`{path}': {e.strerror}")
    if warn and stat.S_IMODE(file_mode) & stat.S_IMODE(dir_mode) & 0o007:
        sys.stderr.write(f"Warning: `{path}' is world accessible\n")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        _die(f"`{path}': {e.strerror}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        _die(f"{path}:{line}: the file is not valid UTF-8 text")
    try:
        parsed = configlib.parse(text, path, wg_quick=True) if validate else Config(path=path)
    except ConfigError as e:
        _die(str(e))
    return QuickConfig(path=path, interface=interface, config=parsed, stripped=strip_text(text))


def table_id(table: str) -> int:
    """A Table= value other than auto/off as a number: decimal, or a name from rt_tables (like ip)."""
    names = {"default": 253, "main": 254, "local": 255}
    if table.isdigit():
        value = int(table)
        if value <= 0xFFFFFFFF:
            return value
    elif table in names:
        return names[table]
    for name in RT_TABLES_FILES:
        try:
            with open(name) as f:
                for line in f:
                    words = line.split("#", 1)[0].split()
                    if len(words) == 2 and words[1] == table:
                        return int(words[0], 0)
        except (OSError, ValueError):
            continue
    _die(f"Table `{table}' is neither auto, off, a number nor a table name of rt_tables")


# --- the record of what `up` did -----------------------------------------------------------------------------


def _state_dir() -> str:
    return os.environ.get("WGPY_STATE_DIR", STATE_DIR_DEFAULT)


def _netns_id() -> str:
    st = os.stat("/proc/self/ns/net")
    return f"{st.st_dev}:{st.st_ino}"


@dataclass
class State:
    """What `up` changed, written after every step so that a crash still leaves an accurate record."""

    interface: str
    netns: str
    config_file: str = ""
    daemon: str = ""  # the program started
    daemon_pid: int = 0
    daemon_start: str = ""  # /proc/PID/stat start time: a reused PID is never signalled
    link_created: bool = False
    addresses: list[str] = field(default_factory=list)
    mtu: int = 0
    dns: str = ""  # the resolvconf record name, once set
    routes: list[list[Any]] = field(default_factory=list)  # [prefix, table]
    fwmark: int = 0  # set by us for a full tunnel
    rules: list[dict[str, Any]] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)  # path -> the value before
    nft_tables: list[str] = field(default_factory=list)  # "ip wg-quick-IFACE"
    iptables: list[list[str]] = field(default_factory=list)  # [program, restore text that deletes]
    complete: bool = False

    @property
    def path(self) -> str:
        return os.path.join(_state_dir(), f"{self.interface}.json")

    def save(self) -> None:
        os.makedirs(_state_dir(), mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.interface}.", dir=_state_dir())
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @classmethod
    def load(cls, interface: str) -> State | None:
        """The record for `interface` in this network namespace, if any (the run directory is shared)."""
        path = os.path.join(_state_dir(), f"{interface}.json")
        try:
            with open(path) as f:
                data = json.load(f)
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        return state if state.netns == _netns_id() and state.interface == interface else None


# --- helpers for the daemon and the device -------------------------------------------------------------------


def _proc_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _socket_inodes(path: str) -> set[str]:
    """Inodes of the listening Unix sockets bound to `path` in this network namespace (/proc/net/unix)."""
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path:
                    inodes.add(fields[6])
    except OSError:
        pass
    return inodes


def daemon_pid(interface: str) -> int:
    """The PID of the process holding the interface's UAPI socket, 0 if none.

    Not SO_PEERCRED: that names the process that called listen(), and daemons that fork after binding (both
    wireguard-go and wgpyd) have left that one behind. The holder is found by the socket's inode instead.
    """
    path = client.socket_path(interface)
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(path)}
    if not wanted:
        return 0
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                        return int(entry)
        except OSError:
            continue
    return 0


def _alive(pid: int, start: str) -> bool:
    return pid > 0 and _proc_start(pid) == start and start != ""


def _wait_daemon_exit(interface: str, pid: int, start: str) -> None:
    """After the link is gone the daemon exits by itself; one that does not is ended by its PID."""
    deadline = time.monotonic() + DAEMON_EXIT_WAIT
    while _alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid, start):
            break
        _log(f"kill -{signal.Signals(sig).name.removeprefix('SIG')} {pid}  # the daemon outlived its link")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while _alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
    # A daemon that had to be killed leaves its socket behind; remove it only if nobody listens on it.
    path = client.socket_path(interface)
    if os.path.exists(path) and not daemon_pid(interface):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:
                pass


def _ntop(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """inet_ntop's text, as iproute2 prints addresses (Python writes IPv4-mapped IPv6 differently)."""
    return socket.inet_ntop(socket.AF_INET6 if address.version == 6 else socket.AF_INET, address.packed)


def _uapi_get(interface: str) -> client.DeviceState:
    try:
        return client.get(interface)
    except OSError as e:
        _die(f"Unable to access interface {interface}: {os.strerror(e.errno) if e.errno else e}")


def _uapi_set(interface: str, change: DeviceChange) -> None:
    try:
        client.apply(interface, change)
    except OSError as e:
        _die(f"Unable to modify interface {interface}: {os.strerror(e.errno) if e.errno else e}")


def _netlink_error(what: str, e: NetlinkError) -> NoReturn:
    code = e.code if isinstance(e.code, int) else errno.EIO
    _die(f"{what}: {os.strerror(code)}")


def execute_hooks(hooks: list[str], interface: str, name: str) -> None:
    """Each hook in bash with %i expanded, stopping at the first failing command (wg-quick runs them under
    `set -e -o pipefail`)."""
    for hook in hooks:
        command = hook.replace("%i", interface)
        _log(command)
        env = {**os.environ, "LC_ALL": "C"}
        # A session of its own, so that when `up` is interrupted the whole hook (its children included) is
        # ended with it rather than left running in the namespace.
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", command], env=env, start_new_session=True)
        try:
            returncode = proc.wait()
        except BaseException:
            _end_session(proc)
            raise
        if returncode != 0:
            _die(f"{name} command failed with exit status {returncode}")


def _end_session(proc: subprocess.Popen[bytes]) -> None:
    """End a hook we started, and everything in the session it leads, by its process-group id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


def _resolvconf_prefix() -> str:
    """resolvconf_iface_prefix: Debian's resolvconf orders interfaces by a pattern like `tun*`."""
    try:
        with open(RESOLVCONF_ORDER) as f:
            for line in f:
                m = re.match(r"^([A-Za-z0-9-]+)\*$", line.rstrip("\n"))
                if m:
                    return m.group(1) + "."
    except OSError:
        pass
    return ""


def _run_tool(args: list[str], stdin: str | None = None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    _log(" ".join(args))
    try:
        result = subprocess.run(args, input=stdin, text=True)
    except FileNotFoundError:
        _die(f"`{args[0]}' is not installed")
    if check and result.returncode != 0:
        _die(f"`{' '.join(args[:2])}' failed with exit status {result.returncode}")
    return result


# --- up --------------------------------------------------------------------------------------------------------


class Up:
    """One `up`: every step records itself in the state before the next begins."""

    def __init__(self, qc: QuickConfig, nl: Netlink) -> None:
        self.qc = qc
        self.nl = nl
        self.iface = qc.interface
        self.conf = qc.config.interface
        self.state = State(interface=self.iface, netns=_netns_id(), config_file=qc.path)
        self.index = 0

    def run(self) -> None:
        if self.nl.link_index(self.iface) is not None:
            _die(f"`{self.iface}' already exists")
        self.state.save()
        previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
        previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        try:
            execute_hooks(self.conf.pre_up, self.iface, "PreUp")
            self.add_if()
            self.set_config()
            for address in self.conf.addresses:
                self.add_addr(address)
            self.set_mtu_up()
            self.set_dns()
            for prefix in self.route_prefixes():
                self.add_route(prefix)
            execute_hooks(self.conf.post_up, self.iface, "PostUp")
            self.state.complete = True
            self.state.save()
        except BaseException:
            # Like wg-quick's trap: undo, and let no second signal cut the undo short. A record whose undo
            # failed is kept, so that `down` can finish the job.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            try:
                undo(self.nl, self.state)
            except Exception as e:
                sys.stderr.write(f"[!] Could not undo everything ({e}): `{PROGRAM} down' will retry\n")
            else:
                self.state.remove()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def add_if(self) -> None:
        program = os.environ.get("WG_QUICK_USERSPACE_IMPLEMENTATION") or DEFAULT_IMPLEMENTATION
        if shutil.which(program) is None:
            _die(f"`{program}' (WG_QUICK_USERSPACE_IMPLEMENTATION) is not installed")
        self.state.daemon = program
        self.state.save()
        _log(f"{program} {self.iface}")
        # The daemon forks and its child may keep the descriptors it inherits: a pipe of ours would then never
        # reach EOF. Its messages go through a file that is copied to stderr once the parent returns.
        with tempfile.TemporaryFile() as out:
            result = subprocess.run([program, self.iface], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            out.seek(0)
            text = out.read().decode(errors="replace")
        sys.stderr.write(text)
        index = self.nl.link_index(self.iface)
        pid = daemon_pid(self.iface)
        if pid:
            self.state.daemon_pid, self.state.daemon_start = pid, _proc_start(pid)
        if index is not None:
            self.state.link_created = True
            self.index = index
        self.state.save()
        if result.returncode != 0:
            _die(f"`{program} {self.iface}' failed with exit status {result.returncode}")
        if index is None or not pid:
            _die(f"`{program} {self.iface}' returned without creating the interface and its UAPI socket")

    def set_config(self) -> None:
        _log(f"wg setconf {self.iface} /dev/stdin")
        try:
            change = wg.change_from_config(self.qc.config, append=False)
        except ConfigError as e:
            _die(str(e))
        _uapi_set(self.iface, change)

    def add_addr(self, address: netlink.Interface) -> None:
        _log(f"ip -{address.version} address add {address} dev {self.iface}")
        try:
            self.nl.add_address(self.index, address)
        except NetlinkError as e:
            _netlink_error(f"adding address {address} to {self.iface}", e)
        self.state.addresses.append(str(address))
        self.state.save()

    def _route_mtu(self, route: netlink.Route | None) -> int:
        if route is None:
            return 0
        if route.mtu:
            return route.mtu
        if route.oif:
            return self.nl.link_mtu(route.oif) or 0
        return 0

    def set_mtu_up(self) -> None:
        mtu = self.conf.mtu
        if mtu is None:
            best = 0
            for peer in _uapi_get(self.iface).peers:
                if peer.endpoint is None or "%" in peer.endpoint[0]:
                    continue
                best = max(best, self._route_mtu(self.nl.route_get(peer.endpoint[0])))
            if best == 0:
                best = self._route_mtu(self.nl.default_route_v4())
            mtu = (best or 1500) - 80
        _log(f"ip link set mtu {mtu} up dev {self.iface}")
        try:
            self.nl.set_mtu_up(self.index, mtu)
        except NetlinkError as e:
            _netlink_error(f"setting the MTU of {self.iface} to {mtu}", e)
        self.state.mtu = mtu
        self.state.save()

    def set_dns(self) -> None:
        if not self.conf.dns:
            return
        text = "".join(f"nameserver {d}\n" for d in self.conf.dns)
        if self.conf.dns_search:
            text += f"search {' '.join(self.conf.dns_search)}\n"
        name = _resolvconf_prefix() + self.iface
        if shutil.which("resolvconf") is None:
            _die("DNS is set but `resolvconf' is not installed (install openresolv)")
        # Recorded first: resolvconf may have stored the entry even when it reports a failure.
        self.state.dns = name
        self.state.save()
        _run_tool(["resolvconf", "-a", name, "-m", "0", "-x"], text)

    def route_prefixes(self) -> list[Network]:
        """`wg show IFACE allowed-ips`, most specific first (wg-quick's `sort -nr -k 2 -t /`)."""
        texts = [client.format_network(n) for p in _uapi_get(self.iface).peers for n in p.allowed_ips]
        texts.sort(key=lambda t: (int(t.rsplit("/", 1)[1]), t.encode()), reverse=True)
        return [ipaddress.ip_network(t) for t in texts]

    def add_route(self, prefix: Network) -> None:
        table = self.conf.table
        if table == "off":
            return
        if table and table != "auto":
            self._route(prefix, table_id(table), table)
        elif prefix.prefixlen == 0:
            self.add_default(prefix)
        elif not self.nl.has_route_covering(self.index, prefix):
            self._route(prefix, netlink.RT_TABLE_MAIN, None)

    def _route(self, prefix: Network, table: int, table_text: str | None) -> None:
        suffix = f" table {table_text}" if table_text else ""
        _log(f"ip -{prefix.version} route add {client.format_network(prefix)} dev {self.iface}{suffix}")
        try:
            self.nl.add_route(prefix, self.index, table)
        except NetlinkError as e:
            _netlink_error(f"adding route {prefix}", e)
        self.state.routes.append([str(prefix), table])
        self.state.save()

    def add_default(self, prefix: Network) -> None:
        table = _uapi_get(self.iface).fwmark
        if not table:
            table = FIRST_AUTO_TABLE
            while self.nl.table_in_use(table):
                table += 1
            _log(f"wg set {self.iface} fwmark {table}")
            _uapi_set(self.iface, DeviceChange(fwmark=table))
            self.state.fwmark = table
            self.state.save()
        family = netlink.family_of(prefix)
        self._route(prefix, table, str(table))
        for rule in (Rule(family, table, fwmark=table, invert=True),
                     Rule(family, netlink.RT_TABLE_MAIN, suppress_prefixlength=0)):
            _log(rule.describe())
            try:
                added = self.nl.add_rule(rule)
            except NetlinkError as e:
                _netlink_error(f"adding rule `{rule.describe()}'", e)
            self.state.rules.append(asdict(added))
            self.state.save()
        self.add_firewall(prefix, table)

    def add_firewall(self, prefix: Network, table: int) -> None:
        """wg-quick's raw/mangle rules: drop packets to our addresses arriving elsewhere, carry the mark."""
        v6 = prefix.version == 6
        pf, iptables = ("ip6", "ip6tables") if v6 else ("ip", "iptables")
        marker = f'-m comment --comment "wg-quick(8) rule for {self.iface}"'
        nftable = f"wg-quick-{self.iface}"
        restore = "*raw\n"
        nft = (f"add table {pf} {nftable}\n"
               f"add chain {pf} {nftable} preraw {{ type filter hook prerouting priority -300; }}\n"
               f"add chain {pf} {nftable} premangle {{ type filter hook prerouting priority -150; }}\n"
               f"add chain {pf} {nftable} postmangle {{ type filter hook postrouting priority -150; }}\n")
        for address in self.nl.addresses(self.index, netlink.family_of(prefix)):
            ip = _ntop(address.ip)
            restore += (f"-I PREROUTING ! -i {self.iface} -d {ip} -m addrtype ! --src-type LOCAL -j DROP "
                        f"{marker}\n")
            nft += (f'add rule {pf} {nftable} preraw iifname != "{self.iface}" {pf} daddr {ip} '
                    f"fib saddr type != local drop\n")
        restore += (f"COMMIT\n*mangle\n-I POSTROUTING -m mark --mark {table} -p udp -j CONNMARK --save-mark "
                    f"{marker}\n-I PREROUTING -p udp -j CONNMARK --restore-mark {marker}\nCOMMIT\n")
        nft += f"add rule {pf} {nftable} postmangle meta l4proto udp mark {table} ct mark set mark \n"
        nft += f"add rule {pf} {nftable} premangle meta l4proto udp meta mark set ct mark \n"
        if not v6:
            _log("sysctl -q net.ipv4.conf.all.src_valid_mark=1")
            before = netlink.read_sysctl(netlink.SRC_VALID_MARK)
            try:
                netlink.write_sysctl(netlink.SRC_VALID_MARK, "1")
            except OSError as e:
                _die(f"setting net.ipv4.conf.all.src_valid_mark: {e.strerror}")
            self.state.sysctl.setdefault(netlink.SRC_VALID_MARK, before or "")
            self.state.save()
        if shutil.which("nft"):
            self.state.nft_tables.append(f"{pf} {nftable}")
            self.state.save()
            _run_tool(["nft", "-f", "-"], nft)
        elif shutil.which(f"{iptables}-restore"):
            self.state.iptables.append([iptables, _iptables_delete_text(restore)])
            self.state.save()
            _run_tool([f"{iptables}-restore", "-n"], restore)
        else:
            sys.stderr.write(f"[!] Neither nft nor {iptables}-restore is installed: the full tunnel of "
                             f"{self.iface} runs without wg-quick's anti-spoofing firewall rules\n")


def _iptables_delete_text(restore: str) -> str:
    """The restore text that deletes the rules `restore` inserted (-I CHAIN becomes -D CHAIN)."""
    return "".join(re.sub(r"^-I ", "-D ", line) + "\n" for line in restore.splitlines())


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


# --- undoing -----------------------------------------------------------------------------------------------------


def _remove_firewall_discovered(iface: str) -> None:
    """wg-quick's remove_firewall: delete the nft tables and iptables rules named after the interface."""
    if shutil.which("nft"):
        listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        tables = [line.strip()[len("table "):] for line in listed.splitlines()
                  if line.strip().startswith("table ") and line.strip().endswith(f" wg-quick-{iface}")]
        if tables:
            _run_tool(["nft", "-f", "-"], "".join(f"delete table {t}\n" for t in tables), check=False)
    for iptables in ("iptables", "ip6tables"):
        if not shutil.which(f"{iptables}-save") or not shutil.which(f"{iptables}-restore"):
            continue
        saved = subprocess.run([f"{iptables}-save"], capture_output=True, text=True).stdout
        restore, found = "", False
        marker = f'-m comment --comment "wg-quick(8) rule for {iface}"'
        for line in saved.splitlines():
            if not (line.startswith("*") or line == "COMMIT" or (line.startswith("-A ") and marker in line)):
                continue
            if line.startswith("-A"):
                found = True
            restore += re.sub(r"^-A", "-D", line) + "\n"
        if found:
            _run_tool([f"{iptables}-restore", "-n"], restore, check=False)


def _unset_dns(name: str) -> None:
    if shutil.which("resolvconf"):
        _run_tool(["resolvconf", "-d", name, "-f"], check=False)


def _delete_rules_discovered(nl: Netlink, table: int) -> None:
    """wg-quick's del_if loops: every rule looking up `table`, every `lookup main suppress_prefixlength 0`."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for rule in nl.rules(family):
            ours = rule.table == table or (rule.table == netlink.RT_TABLE_MAIN and rule.suppress_prefixlength == 0)
            if ours and rule.fwmark in (None, table):
                _log(f"ip -{6 if family == socket.AF_INET6 else 4} rule delete table "
                     f"{'main suppress_prefixlength 0' if rule.table == netlink.RT_TABLE_MAIN else table}")
                with contextlib.suppress(NetlinkError):
                    nl.delete_rule(rule)


def undo(nl: Netlink, state: State) -> None:
    """Undo what `state` records, newest first; every step is attempted even when an earlier one failed."""
    if state.dns:
        _unset_dns(state.dns)
    for table in state.nft_tables:
        _run_tool(["nft", "-f", "-"], f"delete table {table}\n", check=False)
    for program, text in state.iptables:
        _run_tool([f"{program}-restore", "-n"], text, check=False)
    for data in reversed(state.rules):
        rule = Rule(**data)
        _log(rule.describe().replace(" add", " delete", 1))
        with contextlib.suppress(NetlinkError):
            nl.delete_rule(rule)
    _restore_sysctls(nl, state)
    _delete_link(nl, state.interface, state.daemon_pid, state.daemon_start, required=False)


def _restore_sysctls(nl: Netlink, state: State) -> None:
    """Put src_valid_mark back as it was, unless another full tunnel (a `not fwmark` rule) still needs it.

    wg-quick never resets it; wgpy undoes its own change when that cannot break anyone else.
    """
    for path, before in state.sysctl.items():
        if before in ("", "1") or any(r.invert and r.fwmark for r in nl.rules(socket.AF_INET)):
            continue
        name = path.removeprefix("/proc/sys/").replace("/", ".")
        _log(f"sysctl -q {name}={before}")
        with contextlib.suppress(OSError):
            netlink.write_sysctl(path, before)


def _delete_link(nl: Netlink, iface: str, pid: int, start: str, *, required: bool) -> None:
    if not pid:
        pid = daemon_pid(iface)
        start = _proc_start(pid) if pid else ""
    index = nl.link_index(iface)
    if index is not None:
        _log(f"ip link delete dev {iface}")
        try:
            nl.delete_link(index)
        except NetlinkError as e:
            _netlink_error(f"deleting {iface}", e)
    elif required and not pid:
        _die(f"Cannot find device \"{iface}\"")
    if pid:
        _wait_daemon_exit(iface, pid, start)


# --- the commands ----------------------------------------------------------------------------------------------


def cmd_up(qc: QuickConfig) -> None:
    with netlink.netlink() as nl:
        Up(qc, nl).run()


def cmd_down(qc: QuickConfig) -> None:
    iface = qc.interface
    state = State.load(iface)
    if iface not in client.list_interfaces() and state is None:
        _die(f"`{iface}' is not a WireGuard interface")
    conf = qc.config.interface
    execute_hooks(conf.pre_down, iface, "PreDown")
    if conf.save_config:
        save_config(qc)
    with netlink.netlink() as nl:
        if state is not None:
            undo(nl, state)
        else:
            if conf.table in (None, "auto"):
                with contextlib.suppress(OSError):
                    device = client.get(iface)
                    full = any(n.prefixlen == 0 for p in device.peers for n in p.allowed_ips)
                    if device.fwmark and full:
                        _delete_rules_discovered(nl, device.fwmark)
            _delete_link(nl, iface, 0, "", required=True)
        if conf.dns and not (state and state.dns):
            _unset_dns(_resolvconf_prefix() + iface)
        _remove_firewall_discovered(iface)
    if state is not None:
        state.remove()
    execute_hooks(conf.post_down, iface, "PostDown")


def save_config(qc: QuickConfig) -> None:
    """wg-quick's save_config: the running device (wg showconf) with the wg-quick keys put back."""
    iface = qc.interface
    conf = qc.config.interface
    new = ["[Interface]\n"]
    with netlink.netlink() as nl:
        index = nl.link_index(iface)
        addresses = nl.addresses(index) if index is not None else []
        mtu = nl.link_mtu(index) if index is not None else None
    new += [f"Address = {_ntop(a.ip)}/{a.network.prefixlen}\n" for a in addresses]
    name = _resolvconf_prefix() + iface
    listed = ""
    if shutil.which("resolvconf"):
        result = subprocess.run(["resolvconf", "-l", name], capture_output=True, text=True)
        listed = result.stdout if result.returncode == 0 else ""
    if not listed:
        with contextlib.suppress(OSError), open(f"/etc/resolvconf/run/interface/{name}") as f:
            listed = f.read()
    for line in listed.splitlines():
        m = re.match(r"^nameserver ([a-zA-Z0-9_=+:%.-]+)$", line.strip(_IFS))
        if m:
            new.append(f"DNS = {m.group(1)}\n")
    if conf.mtu is not None and mtu:
        new.append(f"MTU = {mtu}\n")
    if conf.table:
        new.append(f"Table = {conf.table}\n")
    if conf.save_config:
        new.append("SaveConfig = true\n")
    for label, hooks in (("PreUp", conf.pre_up), ("PostUp", conf.post_up), ("PreDown", conf.pre_down),
                         ("PostDown", conf.post_down)):
        new += [f"{label} = {h}\n" for h in hooks]
    _log(f"wg showconf {iface}")
    current = show.showconf_text(_uapi_get(iface)).rstrip("\n")
    text = current.replace("[Interface]\n", "".join(new), 1) + "\n"
    tmp = qc.path + ".tmp"
    old_umask = os.umask(0o077)
    try:
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _die("Could not write configuration file")
        try:
            os.replace(tmp, qc.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _die("Could not move configuration file")
    finally:
        os.umask(old_umask)


def cmd_save(qc: QuickConfig) -> None:
    if qc.interface not in client.list_interfaces():
        _die(f"`{qc.interface}' is not a WireGuard interface")
    save_config(qc)


def cmd_strip(qc: QuickConfig) -> None:
    sys.stdout.write(qc.stripped)
    sys.stdout.flush()


def _command(name: str, action: Callable[[QuickConfig], None]) -> Callable[[list[str]], int]:
    def main(args: list[str]) -> int:
        if len(args) == 1 and args[0] in ("-h", "--help", "help"):
            sys.stderr.write(USAGE.format(prog=PROGRAM))
            return 0
        if len(args) != 1:
            sys.stderr.write(USAGE.format(prog=PROGRAM))
            return 1
        if name != "strip" and os.geteuid() != 0:
            sys.stderr.write(f"{PROGRAM}: `{PROGRAM} {name}' must be run as root\n")
            return 1
        try:
            action(parse_options(args[0], validate=name != "strip"))
        except QuickError as e:
            sys.stderr.write(f"{PROGRAM}: {e}\n")
            return 1
        except _Terminated:
            sys.stderr.write(f"{PROGRAM}: interrupted; what `{name}' had done is undone\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{PROGRAM}: interrupted\n")
            return 130
        except (OSError, NetlinkError) as e:
            # What no step expected (a vanished device mid-way, a full disk...): still one line, no traceback.
            sys.stderr.write(f"{PROGRAM}: {getattr(e, 'strerror', None) or e}\n")
            return 1
        return 0

    main.__name__ = f"{name}_main"
    return main


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "up": _command("up", cmd_up),
    "down": _command("down", cmd_down),
    "save": _command("save", cmd_save),
    "strip": _command("strip", cmd_strip),
}
