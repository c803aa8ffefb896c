"""Tunnel benchmark: wireguard-go ↔ wireguard-go, wgpyd ↔ wgpyd and wgpyd ↔ wireguard-go, in one run.

    python3 bench/bench_tunnel.py            # full: 10 s iperf3 runs, median of 3
    python3 bench/bench_tunnel.py --quick    # 3 s runs, one of each (a smoke test of the benchmark itself)

Each pair gets two fresh network namespaces joined by a veth pair (198.18.0.0/15 underlay, MTU 1500; tunnel MTU
1420, 10.0.0.0/24 inside). For each pair it measures, with the same iperf3 and ping invocations:
  - TCP throughput, one stream, both directions, and four streams (median of N runs);
  - ping through the idle tunnel: average and p99 round-trip time;
  - daemon CPU seconds per GB carried (utime + stime of both daemons, from /proc, over the TCP runs);
  - a UDP flood (iperf3 -u -b 0): received rate and loss.
Then it prints one table with every figure and its ratio to wireguard-go ↔ wireguard-go. Results are also written as
JSON under bench/results/ (not committed). Everything the benchmark creates is removed at the end, even on error;
traffic only ever goes to addresses inside its own namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class PairResult:
    name: str
    tcp_fwd: list[float] = field(default_factory=list)  # Gbit/s
    tcp_rev: list[float] = field(default_factory=list)
    tcp_4: list[float] = field(default_factory=list)
    ping_avg_ms: float = 0.0
    ping_p99_ms: float = 0.0
    ping_loss: float = 0.0
    cpu_s_per_gb: float = 0.0
    udp_rx_gbps: float = 0.0
    udp_loss_pct: float = 0.0


def sh(args: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def daemon_cmd(kind: str) -> list[str]:
    if kind == "wgpyd":
        exe = shutil.which("wgpyd")
        return [exe] if exe else [sys.executable, "-m", "wgpy.daemon.main"]
    return ["wireguard-go"]


def genkey() -> tuple[str, str]:
    private = sh(["wg", "genkey"]).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


class Pair:
    """Two namespaces with a tunnel between them, run by the given daemons."""

    def __init__(self, left: str, right: str, tag: str) -> None:
        self.kinds = (left, right)
        self.ns = (f"wgpyb-{tag}-l", f"wgpyb-{tag}-r")
        self.ifaces = (f"wgb{tag}l", f"wgb{tag}r")
        self.veth = (f"vb{tag}l", f"vb{tag}r")
        self.under = ("198.18.0.1", "198.18.0.2")
        self.inner = ("10.0.0.1", "10.0.0.2")
        self.pids: list[int] = []
        self.daemon_pids: list[int] = []

    def up(self) -> None:
        for ns in self.ns:
            sh(["ip", "netns", "add", ns])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "link", "add", self.veth[0], "netns", self.ns[0], "type", "veth", "peer", self.veth[1], "netns",
            self.ns[1]])
        keys = [genkey(), genkey()]
        for i in range(2):
            ns = self.ns[i]
            sh(["ip", "-n", ns, "addr", "add", f"{self.under[i]}/24", "dev", self.veth[i]])
            sh(["ip", "-n", ns, "link", "set", self.veth[i], "up"])
            before = set(sh(["ip", "netns", "pids", ns]).stdout.split())
            env = {**os.environ, "LOG_LEVEL": "error"}
            # Both daemons fork into the background; their output must not hold a pipe open.
            subprocess.run(["ip", "netns", "exec", ns, *daemon_cmd(self.kinds[i]), self.ifaces[i]], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            new = set(sh(["ip", "netns", "pids", ns]).stdout.split()) - before
            self.daemon_pids += [int(p) for p in new]
            with tempfile.NamedTemporaryFile("w", delete=False, dir="/run") as f:
                os.chmod(f.name, 0o600)
                f.write(keys[i][0])
            try:
                j = 1 - i
                sh(["ip", "netns", "exec", ns, "wg", "set", self.ifaces[i], "listen-port", "51820", "private-key",
                    f.name, "peer", keys[j][1], "endpoint", f"{self.under[j]}:51820", "allowed-ips",
                    f"{self.inner[j]}/32"])
            finally:
                os.unlink(f.name)
            sh(["ip", "-n", ns, "addr", "add", f"{self.inner[i]}/24", "dev", self.ifaces[i]])
            sh(["ip", "-n", ns, "link", "set", self.ifaces[i], "mtu", "1420", "up"])
        # Handshake, and wait until the tunnel carries traffic.
        probe = ["ip", "netns", "exec", self.ns[0], "ping", "-c1", "-W1", self.inner[1]]
        for _ in range(50):
            if sh(probe, check=False).returncode == 0:
                break
        else:
            raise RuntimeError(f"tunnel {self.kinds} never came up")
        server = subprocess.Popen(["ip", "netns", "exec", self.ns[1], "iperf3", "-s", "-B", self.inner[1]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pids.append(server.pid)
        time.sleep(0.5)

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.daemon_pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (FileNotFoundError, IndexError, ValueError):
                pass
        return total / CLK_TCK

    def iperf(self, extra: list[str], seconds: int) -> dict[str, object]:
        proc = sh(["ip", "netns", "exec", self.ns[0], "iperf3", "-c", self.inner[1], "-J", "-t", str(seconds),
                   *extra], timeout=seconds + 60)
        result: dict[str, object] = json.loads(proc.stdout)
        return result

    def down(self) -> None:
        for pid in self.pids + self.daemon_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        for ns in self.ns:
            while time.monotonic() < deadline and sh(["ip", "netns", "pids", ns], check=False).stdout.split():
                time.sleep(0.05)
            for pid in sh(["ip", "netns", "pids", ns], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh(["ip", "netns", "del", ns], check=False)
        for iface in self.ifaces:
            Path(f"/var/run/wireguard/{iface}.sock").unlink(missing_ok=True)


def measure(pair: Pair, name: str, seconds: int, repeats: int) -> PairResult:
    result = PairResult(name)
    cpu_start = pair.cpu_seconds()
    carried = 0.0
    for _ in range(repeats):
        for extra, target in (([], result.tcp_fwd), (["-R"], result.tcp_rev), (["-P", "4"], result.tcp_4)):
            data = pair.iperf(extra, seconds)
            end = data["end"]
            assert isinstance(end, dict)
            received = end["sum_received"]
            target.append(received["bits_per_second"] / 1e9)
            carried += received["bytes"] / 1e9
    cpu = pair.cpu_seconds() - cpu_start
    result.cpu_s_per_gb = cpu / carried if carried else float("nan")
    # Ping through the idle tunnel.
    proc = sh(["ip", "netns", "exec", pair.ns[0], "ping", "-c", "200", "-i", "0.01", "-W", "1", pair.inner[1]],
              check=False, timeout=60)
    times = sorted(float(line.split("time=")[1].split()[0]) for line in proc.stdout.splitlines() if "time=" in line)
    if times:
        result.ping_avg_ms = statistics.fmean(times)
        result.ping_p99_ms = times[min(len(times) - 1, int(len(times) * 0.99))]
    result.ping_loss = 1 - len(times) / 200
    data = pair.iperf(["-u", "-b", "0", "-l", "1372"], seconds)
    end = data["end"]
    assert isinstance(end, dict)
    udp = end["sum"]
    result.udp_rx_gbps = udp["bits_per_second"] / 1e9 * (1 - udp.get("lost_percent", 0) / 100)
    result.udp_loss_pct = udp.get("lost_percent", 0.0)
    return result


def table(results: list[PairResult]) -> str:
    base = results[0]
    rows = [
        ("TCP 1 stream →  Gbit/s", lambda r: statistics.median(r.tcp_fwd), True),
        ("TCP 1 stream ←  Gbit/s", lambda r: statistics.median(r.tcp_rev), True),
        ("TCP 4 streams   Gbit/s", lambda r: statistics.median(r.tcp_4), True),
        ("ping avg        ms", lambda r: r.ping_avg_ms, False),
        ("ping p99        ms", lambda r: r.ping_p99_ms, False),
        ("daemon CPU      s/GB", lambda r: r.cpu_s_per_gb, False),
        ("UDP flood rx    Gbit/s", lambda r: r.udp_rx_gbps, True),
        ("UDP flood loss  %", lambda r: r.udp_loss_pct, False),
    ]
    width = max(len(r.name) for r in results) + 12
    out = [f"{'':26}" + "".join(f"{r.name:>{width}}" for r in results)]
    for label, get, _higher_better in rows:
        cells = []
        for r in results:
            value = get(r)
            ref = get(base)
            ratio = f" ({value / ref:.2f}×)" if ref and r is not base else ""
            cells.append(f"{value:.3f}{ratio}".rjust(width))
        out.append(f"{label:26}" + "".join(cells))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 s runs, one repeat")
    parser.add_argument("--pairs", default="go-go,py-py,py-go")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 3, 1
    if os.geteuid() != 0:
        print("bench_tunnel: needs root (network namespaces)", file=sys.stderr)
        return 1
    kinds = {"go": "wireguard-go", "py": "wgpyd"}
    results: list[PairResult] = []
    tag = str(os.getpid() % 10000)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, kernel {platform.release()}, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"iperf3 {args.seconds} s × median of {args.repeats}; wireguard-go: "
          f"{sh(['wireguard-go', '--version']).stdout.split()[1]}")
    for n, spec in enumerate(args.pairs.split(",")):
        left, right = (kinds[k] for k in spec.split("-"))
        name = f"{left}↔{right}".replace("wireguard-go", "wg-go")
        pair = Pair(left, right, f"{tag}{n}")
        try:
            print(f"--- {name}", flush=True)
            pair.up()
            results.append(measure(pair, name, args.seconds, args.repeats))
        finally:
            pair.down()
    print(table(results))
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"tunnel-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
