"""`wgpy demo`: a working tunnel between two network namespaces, shown with `wg show` and a ping, then removed.

One side runs wgpyd; the other runs Debian's wireguard-go when it is installed (so the demo doubles as an interop
check) and wgpyd otherwise. Everything lives in two fresh namespaces joined by a veth pair on 198.18.0.0/15; the
root namespace's addresses and routes are never touched, and everything is removed on the way out, even on error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wgpy.keys import generate_private_key, public_key, to_base64

RUN_DIR = Path("/var/run/wireguard")


def _say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"==> {message}", flush=True)


def _run(args: list[str], check: bool = True, show: bool = False) -> subprocess.CompletedProcess[str]:
    if show:
        print("$ " + " ".join(args), flush=True)
    proc = subprocess.run(args, capture_output=True, text=True)
    if show and proc.stdout:
        print(proc.stdout.rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _daemon_command(kind: str) -> list[str]:
    if kind == "wgpyd":
        exe = shutil.which("wgpyd")
        return [exe] if exe else [sys.executable, "-m", "wgpy.daemon.main"]
    return ["wireguard-go"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wgpy demo", description=__doc__)
    parser.add_argument("--peer", choices=["auto", "wgpyd", "wireguard-go"], default="auto",
                        help="the daemon on the second side (default: wireguard-go when installed)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("wgpy demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    other = args.peer
    if other == "auto":
        other = "wireguard-go" if shutil.which("wireguard-go") else "wgpyd"
    tag = str(os.getpid() % 100000)
    ns = [f"wgpy-demo-a{tag}", f"wgpy-demo-b{tag}"]
    ifaces = [f"wgda{tag}", f"wgdb{tag}"]
    veth = [f"vda{tag}", f"vdb{tag}"]
    under = ["198.18.0.1", "198.18.0.2"]
    inner = ["10.0.0.1", "10.0.0.2"]
    inner6 = ["fd00::1", "fd00::2"]
    daemons = ["wgpyd", other]
    keys = [generate_private_key() for _ in range(2)]
    pids: list[int] = []
    try:
        _say(f"creating namespaces {ns[0]} (wgpyd) and {ns[1]} ({other}) joined by a veth pair")
        for name in ns:
            _run(["ip", "netns", "add", name])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", veth[0], "netns", ns[0], "type", "veth", "peer", veth[1], "netns", ns[1]])
        for i in range(2):
            _run(["ip", "-n", ns[i], "addr", "add", f"{under[i]}/24", "dev", veth[i]])
            _run(["ip", "-n", ns[i], "link", "set", veth[i], "up"])
        for i in range(2):
            _say(f"starting {daemons[i]} for {ifaces[i]} in {ns[i]}")
            _run(["ip", "netns", "exec", ns[i], *_daemon_command(daemons[i]), ifaces[i]])
            pids += [int(p) for p in _run(["ip", "netns", "pids", ns[i]]).stdout.split()]
        # The second side first: wgpyd starts its handshake the moment it is given an endpoint, so its peer should
        # already be listening with its key by then.
        for i in (1, 0):
            j = 1 - i
            key_file = Path(f"/run/wgpy-demo-{tag}-{i}.key")
            old_umask = os.umask(0o077)
            try:
                key_file.write_text(to_base64(keys[i]) + "\n")
            finally:
                os.umask(old_umask)
            try:
                _run(["ip", "netns", "exec", ns[i], "wg", "set", ifaces[i], "listen-port", "51820",
                      "private-key", str(key_file), "peer", to_base64(public_key(keys[j])),
                      "endpoint", f"{under[j]}:51820", "allowed-ips", f"{inner[j]}/32,{inner6[j]}/128"])
            finally:
                key_file.unlink()
            _run(["ip", "-n", ns[i], "addr", "add", f"{inner[i]}/24", "dev", ifaces[i]])
            _run(["ip", "-n", ns[i], "addr", "add", f"{inner6[i]}/64", "dev", ifaces[i], "nodad"])
            _run(["ip", "-n", ns[i], "link", "set", ifaces[i], "up"])
        _say(f"pinging {inner[1]} (IPv4) and {inner6[1]} (IPv6) through the tunnel from {ns[0]}")
        _run(["ip", "netns", "exec", ns[0], "ping", "-c", "3", "-i", "0.2", "-W", "5", inner[1]], show=True)
        _run(["ip", "netns", "exec", ns[0], "ping", "-c", "3", "-i", "0.2", "-W", "5", inner6[1]], show=True)
        _say("wg show, against wgpyd")
        _run(["ip", "netns", "exec", ns[0], "wg", "show", ifaces[0]], show=True)
        _say(f"wg show, against {other}")
        _run(["ip", "netns", "exec", ns[1], "wg", "show", ifaces[1]], show=True)
        _say("the tunnel works")
        return 0
    except (RuntimeError, OSError) as e:
        print(f"wgpy demo: {e}", file=sys.stderr)
        return 1
    finally:
        _say("tearing down")
        for pid in pids:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for name in ns:
            _run(["ip", "netns", "del", name], check=False)
        for iface in ifaces:
            (RUN_DIR / f"{iface}.sock").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
