"""Network namespaces for tests: created per test, uniquely named, always removed.

Every namespace and interface name carries this process's PID and a counter, because `/var/run/wireguard/` and the
namespace list are shared by everything on the machine. Underlay addresses are in 198.18.0.0/15 and tunnel
addresses in 10.0.0.0/8 and fd00::/8: nothing here ever touches the root namespace's addresses or routes.
Processes started through a :class:`Lab` are ended by their PID in teardown, even when the test failed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

WG_RUN_DIR = Path("/var/run/wireguard")
_counter = itertools.count(1)


def require_root() -> None:
    """Fail loudly (never skip) when the test cannot get what it needs: CI must not pass by skipping."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.fail("iproute2 (`ip`) is not installed: run .ci/run's install step")


def unique(prefix: str) -> str:
    """A name unique on this machine, short enough for an interface (15 characters)."""
    name = f"{prefix}{os.getpid() % 100000}{next(_counter)}"
    assert len(name) <= 15, name
    return name


class Namespace:
    def __init__(self, name: str, lab: Lab) -> None:
        self.name = name
        self.lab = lab

    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self, args: Sequence[str], check: bool = True, timeout: float = 60, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(args), capture_output=True, text=True, timeout=timeout, input=input,
            env=env if env is None else {**os.environ, **env},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} in {self.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], check=check, timeout=timeout)

    def popen(self, args: Sequence[str], env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(  # type: ignore[call-overload]
            self.cmd(args), env=env if env is None else {**os.environ, **env}, **kw
        )
        self.lab.processes.append(proc)
        return proc

    def ping(self, address: str, count: int = 3, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return self.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", address], check=False, timeout=timeout)

    def wait_ping(self, address: str, seconds: float = 15) -> None:
        """Ping until one echo comes back (the first packets trigger a handshake), or fail."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.run(["ping", "-c", "1", "-W", "1", address], check=False).returncode == 0:
                return
        raise AssertionError(f"no ping reply from {address} in {self.name} within {seconds} s")


class Lab:
    """A set of namespaces, veth links, processes and WireGuard interfaces that one test owns."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.interfaces: list[str] = []
        self.cleanups: list[tuple[str, object]] = []

    def namespace(self) -> Namespace:
        name = unique("wgpyt-")
        subprocess.run(["ip", "netns", "add", name], check=True)
        ns = Namespace(name, self)
        self.namespaces.append(ns)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def veth(self, a: Namespace, a_addrs: Sequence[str], b: Namespace, b_addrs: Sequence[str]) -> tuple[str, str]:
        """A veth pair between two namespaces with the given CIDR addresses (198.18.0.0/15, fd00::/8)."""
        ia, ib = unique("va"), unique("vb")
        subprocess.run(["ip", "link", "add", ia, "netns", a.name, "type", "veth", "peer", ib, "netns", b.name],
                       check=True)
        for ns, ifname, addrs in ((a, ia, a_addrs), (b, ib, b_addrs)):
            for addr in addrs:
                flags = ["nodad"] if ":" in addr else []
                ns.run(["ip", "addr", "add", addr, "dev", ifname, *flags])
            ns.run(["ip", "link", "set", ifname, "up"])
        return ia, ib

    def interface(self, prefix: str = "wgt") -> str:
        """A unique WireGuard interface name whose UAPI socket is removed in teardown if left behind."""
        name = unique(prefix)
        self.interfaces.append(name)
        return name

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        proc.kill()
                        proc.wait(timeout=5)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        pass
        for ns in reversed(self.namespaces):
            # Daemons that detached (wireguard-go, wgpyd without -f) are ended by the PID we find in the namespace.
            pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout.split()
                if pids:
                    time.sleep(0.05)
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        for name in self.interfaces:
            for suffix in (".sock", ".name"):
                try:
                    (WG_RUN_DIR / f"{name}{suffix}").unlink()
                except FileNotFoundError:
                    pass


@contextmanager
def lab() -> Iterator[Lab]:
    require_root()
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab
