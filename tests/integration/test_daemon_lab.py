"""wgpyd's life cycle in namespaces, and the helpers every tests/integration/test_daemon_*.py module shares.

Each test builds its own namespaces with tests/netns.py; daemons (wgpyd and Debian's wireguard-go) are started
inside them and end by PID in teardown. Their logs go to files under /tmp named after the interface, so a failing
test can show them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.netns import WG_RUN_DIR, Lab, Namespace, lab

WGPYD = "wgpyd"
WIREGUARD_GO = "wireguard-go"


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def genkey() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


def genpsk() -> str:
    return subprocess.run(["wg", "genpsk"], capture_output=True, text=True, check=True).stdout.strip()


def uapi(iface: str, request: str, timeout: float = 10) -> str:
    """One raw request on the interface's UAPI socket; returns the answer up to its final empty line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(WG_RUN_DIR / f"{iface}.sock"))
        sock.sendall(request.encode())
        out = b""
        while not out.endswith(b"\n\n") or b"errno=" not in out:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    return out.decode()


def daemon_pids(ns: Namespace, iface: str) -> list[int]:
    """PIDs of processes in ``ns`` whose command line names ``iface`` (the detached daemon)."""
    pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if iface.encode() in cmdline:
            found.append(int(pid))
    return found


def wait_until(predicate: object, seconds: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def link_exists(ns: Namespace, iface: str) -> bool:
    return ns.run(["ip", "link", "show", "dev", iface], check=False).returncode == 0


@dataclass
class Node:
    """One WireGuard interface in one namespace, served by wgpyd or wireguard-go."""

    ns: Namespace
    iface: str
    kind: str
    outer4: str
    outer6: str
    inner4: str
    inner6: str
    port: int = 51820
    private: str = ""
    public: str = ""
    log: Path = field(default_factory=Path)

    def __post_init__(self) -> None:
        self.private, self.public = genkey()
        self.log = Path(f"/tmp/{self.iface}-{self.kind}.log")

    def start(self, extra_env: dict[str, str] | None = None, args: Sequence[str] = ()) -> None:
        env = {"LOG_LEVEL": "verbose", **(extra_env or {})}
        exports = " ".join(f"{k}='{v}'" for k, v in env.items())
        command = " ".join([self.kind, *args, self.iface])
        self.ns.sh(f"{exports} {command} >>{self.log} 2>&1")
        assert (WG_RUN_DIR / f"{self.iface}.sock").exists()
        self.ns.sh(
            f"ip addr add {self.inner4}/24 dev {self.iface} && "
            f"ip -6 addr add {self.inner6}/64 dev {self.iface} nodad && ip link set {self.iface} up"
        )

    def wg(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ns.run(["wg", *args], input=input, check=check)

    def setconf(self, text: str, command: str = "setconf") -> None:
        self.wg(command, self.iface, "/dev/stdin", input=text)

    def uapi(self, request: str) -> str:
        return uapi(self.iface, request)

    def pids(self) -> list[int]:
        return daemon_pids(self.ns, self.iface)

    def endpoint(self, family: str) -> str:
        return f"{self.outer4}:{self.port}" if family == "4" else f"[{self.outer6}]:{self.port}"

    def logs(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""


def peer_block(peer: Node, allowed: str, endpoint: str | None = None, psk: str | None = None,
               keepalive: int = 0) -> str:
    text = f"[Peer]\nPublicKey = {peer.public}\nAllowedIPs = {allowed}\n"
    if endpoint:
        text += f"Endpoint = {endpoint}\n"
    if psk:
        text += f"PresharedKey = {psk}\n"
    if keepalive:
        text += f"PersistentKeepalive = {keepalive}\n"
    return text


def interface_block(node: Node, port: int | None = None) -> str:
    return f"[Interface]\nPrivateKey = {node.private}\nListenPort = {node.port if port is None else port}\n"


def make_pair(
    lab: Lab, kind_a: str, kind_b: str, *, family: str = "4", psk: bool = False, a_knows_b: bool = True,
    b_knows_a: bool = True, a_args: Sequence[str] = (), before_config: Callable[[Node, Node], None] | None = None,
) -> tuple[Node, Node]:
    """Two namespaces joined by a veth, one WireGuard interface in each, configured as each other's peer.

    ``a_knows_b``: A has B's endpoint (so A can initiate); the other side learns A's endpoint from the handshake.
    """
    ns_a, ns_b = lab.namespace(), lab.namespace()
    lab.veth(ns_a, ["198.18.0.1/24", "fd00:18::1/64"], ns_b, ["198.18.0.2/24", "fd00:18::2/64"])
    a = Node(ns_a, lab.interface(), kind_a, "198.18.0.1", "fd00:18::1", "10.0.0.1", "fd00:a::1")
    b = Node(ns_b, lab.interface(), kind_b, "198.18.0.2", "fd00:18::2", "10.0.0.2", "fd00:a::2")
    a.start(args=a_args)
    b.start()
    if before_config is not None:
        before_config(a, b)
    key = genpsk() if psk else None
    # B first: A's first initiation (sent as soon as A has B's endpoint) then finds B ready.
    b.setconf(interface_block(b) + peer_block(a, f"{a.inner4}/32,{a.inner6}/128",
                                              a.endpoint(family) if b_knows_a else None, key))
    a.setconf(interface_block(a) + peer_block(b, f"{b.inner4}/32,{b.inner6}/128",
                                              b.endpoint(family) if a_knows_b else None, key))
    return a, b


def assert_clean(node: Node) -> None:
    """Nothing left behind: no process, no socket file, no interface."""
    wait_until(lambda: not node.pids(), 10, f"{node.kind} {node.iface} to exit")
    assert not (WG_RUN_DIR / f"{node.iface}.sock").exists(), "socket file left behind"
    assert not link_exists(node.ns, node.iface), "interface left behind"


# --- life cycle ----------------------------------------------------------------------------------------------------


def test_version_and_usage() -> None:
    out = subprocess.run([WGPYD, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("wgpyd v")
    out = subprocess.run([WGPYD], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Usage" in out.stderr


def _single(lab: Lab) -> Node:
    ns = lab.namespace()
    node = Node(ns, lab.interface(), WGPYD, "", "", "10.0.0.1", "fd00:a::1")
    node.start()
    return node


@pytest.mark.netns
def test_daemonises_and_stops_on_sigterm(netlab: Lab) -> None:
    node = _single(netlab)
    pids = node.pids()
    assert len(pids) == 1, pids
    st = (WG_RUN_DIR / f"{node.iface}.sock").lstat()
    assert st.st_mode & 0o777 == 0o700
    mtu = node.ns.run(["cat", f"/sys/class/net/{node.iface}/mtu"]).stdout.strip()
    assert mtu == "1420"
    answer = node.uapi("get=1\n\n")
    assert answer.startswith("listen_port=") and answer.endswith("errno=0\n\n")
    assert int(answer.split("\n")[0].split("=")[1]) > 0  # a port was picked at start, as wireguard-go does
    os.kill(pids[0], signal.SIGTERM)
    assert_clean(node)


@pytest.mark.netns
def test_stops_when_socket_file_removed(netlab: Lab) -> None:
    node = _single(netlab)
    (WG_RUN_DIR / f"{node.iface}.sock").unlink()
    assert_clean(node)


@pytest.mark.netns
def test_stops_when_interface_deleted(netlab: Lab) -> None:
    node = _single(netlab)
    node.ns.run(["ip", "link", "del", "dev", node.iface])
    assert_clean(node)


@pytest.mark.netns
def test_foreground_and_sigint(netlab: Lab) -> None:
    ns = netlab.namespace()
    iface = netlab.interface()
    proc = ns.popen([WGPYD, "--foreground", iface], env={"LOG_LEVEL": "verbose"},
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_until(lambda: (WG_RUN_DIR / f"{iface}.sock").exists(), 20, "the UAPI socket")
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    text = out.decode()
    assert f"DEBUG: ({iface}) " in text and "Device closing" in text
    assert not (WG_RUN_DIR / f"{iface}.sock").exists() and not link_exists(ns, iface)


@pytest.mark.netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_the_socket_appears_still_stops_cleanly(netlab: Lab, sig: signal.Signals) -> None:
    """The socket file exists a few milliseconds before the event loop takes the signals over (the UDP sockets,
    the core and the loop are still being made): a signal in that window is remembered, and the daemon stops as
    it would later, removing the socket file, instead of dying of it half set up."""
    ns = netlab.namespace()
    for _ in range(5):
        iface = netlab.interface()
        sock = WG_RUN_DIR / f"{iface}.sock"
        proc = ns.popen([WGPYD, "--foreground", iface], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            pass  # no sleep: signal as early as the socket file can be seen
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert not sock.exists() and not link_exists(ns, iface)


@pytest.mark.netns
def test_second_daemon_refused_and_first_unharmed(netlab: Lab) -> None:
    node = _single(netlab)
    out = node.ns.run([WGPYD, node.iface], check=False)
    assert out.returncode == 1 and "failed to set up" in out.stderr
    assert node.uapi("get=1\n\n").endswith("errno=0\n\n")
    assert len(node.pids()) == 1


@pytest.mark.netns
def test_stale_socket_replaced(netlab: Lab) -> None:
    ns = netlab.namespace()
    iface = netlab.interface()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(WG_RUN_DIR / f"{iface}.sock"))
    stale.close()  # the file stays; nobody listens
    ns.run([WGPYD, iface])
    assert uapi(iface, "get=1\n\n").endswith("errno=0\n\n")


@pytest.mark.netns
def test_keylog_file_created_private_with_warning(netlab: Lab, tmp_path: Path) -> None:
    ns = netlab.namespace()
    iface = netlab.interface()
    keylog = tmp_path / "keys.log"
    out = ns.run([WGPYD, "--keylog", str(keylog), iface])
    assert "key log is ON" in out.stderr
    assert keylog.exists() and keylog.stat().st_mode & 0o777 == 0o600


ADOPT = r"""
import os, socket, sys
from wgpy.linux.tun import Tun
name = sys.argv[1]
tun = Tun.create(name, mtu=1300)
tun_fd = os.dup(tun.fd)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(f"/var/run/wireguard/{name}.sock")
listener.listen()
uapi_fd = os.dup(listener.fileno())
for fd in (tun_fd, uapi_fd):
    os.set_inheritable(fd, True)
os.environ.update(WG_TUN_FD=str(tun_fd), WG_UAPI_FD=str(uapi_fd), WG_PROCESS_FOREGROUND="1")
os.execvp("wgpyd", ["wgpyd", name])
"""


@pytest.mark.netns
def test_adopts_wg_tun_fd_and_wg_uapi_fd(netlab: Lab) -> None:
    """wireguard-go's hand-over: an already open TUN and listening UAPI socket passed by file descriptor."""
    ns = netlab.namespace()
    iface = netlab.interface()
    proc = ns.popen(["python3", "-c", ADOPT, iface], env={"LOG_LEVEL": "verbose"},
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            return uapi(iface, "get=1\n\n", timeout=1).endswith("errno=0\n\n")
        except OSError:
            return False

    wait_until(answers, 20, "the adopted UAPI socket to answer")
    assert ns.run(["cat", f"/sys/class/net/{iface}/mtu"]).stdout.strip() == "1300"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out.decode()
    assert not (WG_RUN_DIR / f"{iface}.sock").exists() and not link_exists(ns, iface)


EPOLL_WAIT_SYSCALLS = {"232", "281", "441"}  # x86_64: epoll_wait, epoll_pwait, epoll_pwait2


@pytest.mark.netns
def test_idle_daemon_sleeps(netlab: Lab) -> None:
    """No polling tick: with nothing to do the loop sleeps in epoll_wait with an infinite timeout (-1).

    /proc/PID/syscall names the system call a sleeping process is in and its arguments; the fourth argument of
    epoll_wait is the timeout.
    """
    node = _single(netlab)
    node.wg("set", node.iface, "private-key", "/dev/stdin", "peer", genkey()[1], "allowed-ips", "10.9.0.0/16",
            input=node.private)
    [pid] = node.pids()
    samples = []
    for _ in range(20):
        time.sleep(0.1)
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        if fields[0] in EPOLL_WAIT_SYSCALLS:
            samples.append(int(fields[4], 16) & 0xFFFFFFFF)  # an int argument: the low 32 bits
    assert len(samples) >= 15
    assert set(samples) == {0xFFFFFFFF}  # -1: no timeout at all


@pytest.mark.netns
def test_a_lone_packet_costs_one_tun_read(netlab: Lab) -> None:
    """After a quiet wait the daemon reads the TUN device once for the packet that woke it, without a second read
    that would only return EAGAIN (QUIET_WAIT in wgpy/daemon/loop.py): pings 0.2 s apart cost the pinging side's
    daemon one read each. /proc/PID/io counts read system calls (syscr): readv on the TUN device counts, recvmsg
    on the UDP sockets does not. The slack is for what the kernel itself may still send through the new
    interface (IPv6 multicast listener reports); draining would cost two reads per ping, 20.
    """
    a, b = make_pair(netlab, WGPYD, WGPYD)
    a.ns.wait_ping(b.inner4)
    [pid] = a.pids()

    def reads() -> int:
        found = re.search(r"^syscr: (\d+)$", Path(f"/proc/{pid}/io").read_text(), re.M)
        assert found is not None
        return int(found.group(1))

    before = reads()
    assert a.ns.ping(b.inner4, count=10).returncode == 0
    assert 10 <= reads() - before <= 14


@pytest.mark.netns
@pytest.mark.parametrize("level", ["error", "silent", "verbose"])
def test_log_levels_like_wireguard_go(netlab: Lab, level: str) -> None:
    """``ERROR: (IFACE) YYYY/MM/DD HH:MM:SS message`` at the default and error levels, nothing when silent."""
    ns = netlab.namespace()
    iface = netlab.interface()
    proc = ns.popen([WGPYD, "-f", iface], env={"LOG_LEVEL": level}, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)
    wait_until(lambda: (WG_RUN_DIR / f"{iface}.sock").exists(), 20, "the UAPI socket")
    assert uapi(iface, "set=1\nfoo=bar\n\n") == "errno=-22\n\n"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=10)[0].decode()
    error = re.compile(rf"^ERROR: \({iface}\) \d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d IPC error -22: invalid UAPI device key",
                       re.M)
    if level == "silent":
        assert out == ""
    else:
        assert error.search(out), out
        assert ("DEBUG: " in out) == (level == "verbose"), out


HOLDER = r"""
import os, subprocess, sys
r, w = os.pipe()
os.set_inheritable(w, True)
subprocess.run(["wgpyd", sys.argv[1]], close_fds=False, check=True)
os.close(w)
os.set_blocking(r, False)
try:
    print("eof" if os.read(r, 1) == b"" else "data")
except BlockingIOError:
    print("held by the daemon")
"""


@pytest.mark.netns
def test_daemon_keeps_no_inherited_descriptor(netlab: Lab) -> None:
    """Whoever started wgpyd and waits for the end of a pipe it handed down is not kept waiting by the daemon."""
    ns = netlab.namespace()
    iface = netlab.interface()
    assert ns.run(["python3", "-c", HOLDER, iface]).stdout.strip() == "eof"
    assert uapi(iface, "get=1\n\n").endswith("errno=0\n\n")
