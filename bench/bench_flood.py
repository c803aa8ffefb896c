"""Handshake-flood benchmark: wgpyd and wireguard-go as the server of a live tunnel, under the same floods, one run.

    python3 bench/bench_flood.py                 # 25k/s and flat-out floods, 5 s iperf3, CPU per message by mode
    python3 bench/bench_flood.py --quick         # shorter (a smoke test of the benchmark itself)
    python3 bench/bench_flood.py --profile       # also py-spy wgpyd during the flat-out flood, print hot spots

For each server (wgpyd, then wireguard-go) it builds the lab of tests/integration/test_flood.py — server S, a
wireguard-go client C with a live tunnel to S, and a flooder F that sends initiations with a valid mac1 from 250
spoofed sources in 198.19.0.0/16 through a raw socket (tools/flood.py) — and measures, with no flood, at 25,000/s
(from 250 sources, then from 65,000 so that the per-source limits do not bind) and flat out (one core, pre-built
datagrams):
  - tunnel TCP throughput C -> S (iperf3, one stream) and ping C -> S (avg, loss), during the flood;
  - cookie replies that reached the spoofed sources (counted in F), and wgpyd's own counters;
  - datagrams the server's UDP socket dropped because it did not read them in time (RcvbufErrors);
  - server CPU seconds and RSS;
then the server's CPU per delivered message for valid-mac1, bad-mac1 and garbage floods at 25,000/s with no tunnel
traffic; and, in this process, the protocol core's own cost per flood message under load (``Device.receive`` on
pre-built messages from 250 sources, no sockets), as is and with two changes proposed from the profile applied
for the measurement only (packing the source address with ``socket.inet_pton`` instead of ``ipaddress``; treating
an all-zero mac2 as invalid without computing the cookie and the MAC). Traffic only goes to addresses inside
the benchmark's own namespaces; every namespace and process it made is removed at the end, even on error.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO  # noqa: E402
from tests.integration.test_flood import (  # noqa: E402
    TOOLS_ENV,
    FloodLab,
    flood_lab,
    parse_ping,
    proc_cpu_seconds,
    proc_rss_kib,
    read_stats,
    udp_rcvbuf_errors,
    wait_drained,
)
from tests.netns import lab  # noqa: E402
from tools.flood import LABEL_MAC1, initiation  # noqa: E402
from wgpy.protocol import cookie as cookie_module  # noqa: E402
from wgpy.protocol import device as device_module  # noqa: E402
from wgpy.protocol.constants import PACKETS_BURSTABLE, PACKETS_PER_SECOND  # noqa: E402
from wgpy.protocol.crypto import hash as blake2s_hash  # noqa: E402
from wgpy.protocol.crypto import public_key  # noqa: E402

UNSTEERED = "wgpyd-unsteered"


@dataclass
class Row:
    server: str
    flood: str
    offered_per_s: float = 0.0
    delivered_per_s: float = 0.0  # offered minus what the server's socket dropped
    cookies_at_sources: int = 0
    cookie_sources: int = 0
    cookies_per_source_max: int = 0
    cookie_bound: float = 0.0  # burst + rate x (flood start .. the daemon drained its socket)
    under_load_periods: int = 0
    dh_failures: int = 0
    rcvbuf_drops: int = 0
    server_cpu_pct: float = 0.0
    server_rss_mib: float = 0.0
    tcp_gbps: float = 0.0
    ping_avg_ms: float = 0.0
    ping_lost: int = 0
    ping_sent: int = 0


@dataclass
class ModeCost:
    server: str
    mode: str
    offered: int = 0
    delivered: int = 0
    cpu_s: float = 0.0
    us_per_message: float = 0.0


@dataclass
class Results:
    machine: str
    date: str
    rows: list[Row] = field(default_factory=list)
    costs: list[ModeCost] = field(default_factory=list)
    profile: list[tuple[str, float]] = field(default_factory=list)
    core_us: dict[str, float] = field(default_factory=dict)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, proc_rss_kib(self.pid))
            except OSError:
                return
            self.done.wait(0.2)


def iperf(fl: FloodLab, seconds: int) -> float:
    out = fl.client.ns.run(["iperf3", "-c", fl.server.inner4, "-J", "-t", str(seconds)], timeout=seconds + 60,
                           check=False)
    try:
        data = json.loads(out.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError):
        return 0.0


def measure(fl: FloodLab, name: str, mode: str | None, rate: float, iperf_s: int, ping_n: int,
            profile_out: Path | None = None, sources: int = 250) -> Row:
    """Flood (or not) while pinging then running iperf3 through the tunnel."""
    pid = fl.server_pid
    row = Row(fl.label, name)
    is_wgpyd = fl.has_stats
    before = read_stats(fl.server) if is_wgpyd else {}
    drops0 = udp_rcvbuf_errors(fl.server.ns)
    ping_s = ping_n * 0.1
    flood_s = ping_s + iperf_s + 2.5
    listener = fl.listener(flood_s + 6) if mode else None
    flood = None
    flood_start = time.monotonic()
    if mode:
        flood = fl.flooder.popen(fl.flood_args(mode, rate, flood_s, sources), env=TOOLS_ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        time.sleep(1.0)  # let the daemon reach its steady state under the flood
    sampler = RssSampler(pid)
    sampler.start()
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    spy = None
    if profile_out is not None:
        spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(ping_s + iperf_s)), "-r", "250",
                                "-f", "raw", "-o", str(profile_out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ping = fl.client.ns.run(["ping", "-c", str(ping_n), "-i", "0.1", "-W", "2", fl.server.inner4], check=False,
                            timeout=ping_s + 30)
    row.ping_sent, received, row.ping_avg_ms = parse_ping(ping.stdout)
    row.ping_lost = row.ping_sent - received
    row.tcp_gbps = iperf(fl, iperf_s)
    cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
    sampler.done.set()
    sampler.join()
    if spy is not None:
        spy.wait(timeout=60)
    row.server_cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    row.server_rss_mib = sampler.peak / 1024
    if flood is not None and listener is not None:
        out, _ = flood.communicate(timeout=flood_s + 60)
        result = json.loads(out.decode().strip().splitlines()[-1])
        drained = wait_drained(fl.server) if is_wgpyd else time.monotonic()
        row.cookie_bound = PACKETS_BURSTABLE + PACKETS_PER_SECOND * (drained - flood_start)
        listener.terminate()
        got, _ = listener.communicate(timeout=15)
        replies = json.loads(got.decode().strip().splitlines()[-1])
        row.offered_per_s = result["rate"]
        row.rcvbuf_drops = udp_rcvbuf_errors(fl.server.ns) - drops0
        row.delivered_per_s = max(0.0, result["sent"] - row.rcvbuf_drops) / result["elapsed"]
        row.cookies_at_sources = replies["by_type"].get("3", 0)
        row.cookie_sources = replies["sources"]
        row.cookies_per_source_max = replies["per_source_max"]
    if is_wgpyd:
        after = read_stats(fl.server)
        row.under_load_periods = after["under_load_periods"] - before.get("under_load_periods", 0)
        row.dh_failures = after["drop_handshake_failed"] - before.get("drop_handshake_failed", 0)
    return row


def mode_cost(fl: FloodLab, mode: str, rate: float, seconds: float) -> ModeCost:
    pid = fl.server_pid
    drops0 = udp_rcvbuf_errors(fl.server.ns)
    cpu0 = proc_cpu_seconds(pid)
    result = fl.flood(mode, rate, seconds)
    time.sleep(0.5)  # let the daemon finish the backlog in its socket
    cpu = proc_cpu_seconds(pid) - cpu0
    delivered = int(result["sent"]) - (udp_rcvbuf_errors(fl.server.ns) - drops0)
    return ModeCost(fl.label, mode, int(result["sent"]), delivered, cpu, 1e6 * cpu / max(1, delivered))


def hot_spots(raw: Path, top: int = 15) -> list[tuple[str, float]]:
    """Self time per function from py-spy's collapsed stacks ("frame;frame;leaf count")."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        own[re.sub(r"\s+", " ", leaf)] += n
    return [(name, 100 * n / total) for name, n in own.most_common(top)] if total else []


def inclusive(raw: Path, names: list[str]) -> dict[str, float]:
    """Share of samples whose stack contains each function name (inclusive time)."""
    hits: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for name in names:
            if f"{name} (" in stack:
                hits[name] += int(count)
    return {name: 100 * hits[name] / total for name in names} if total else {}


def core_cost_us(mode: str = "valid", rounds: int = 3) -> float:
    """µs per message of ``Device.receive`` under a flood of 250 sources at 25,000/s of simulated time."""
    device = device_module.Device()
    private = bytes(range(32))
    device.set_private_key(private, 0.0)
    rng = random.Random(1)
    key = blake2s_hash(LABEL_MAC1, public_key(private)) if mode == "valid" else None
    sources = [(str(ipaddress.IPv4Address("198.19.0.1") + i), 40000) for i in range(250)]
    messages = [(initiation(rng, key), sources[i % len(sources)]) for i in range(8192)]
    now = 10.0
    device.receive(messages[:2048], now, 0.0)  # past the under-load threshold (these do DH)
    device.take_datagrams()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        n = 0
        for _ in range(4):
            for j in range(0, len(messages), 64):
                now += 64 / 25000
                device.receive(messages[j:j + 64], now, 0.0)
                device.take_datagrams()
                n += 64
        best = min(best, (time.perf_counter() - start) / n)
    return 1e6 * best


def _source_bytes_inet_pton(host: str, port: int) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host) + port.to_bytes(2, "big")


def core_costs(rounds: int = 7) -> dict[str, float]:
    """The core's cost per flood message, as is and with the proposed changes (applied in this process only).

    The variants are measured in turns, ``rounds`` times each, and the best of each is kept: on a shared machine a
    load spike then hits one round of one variant, not a whole variant."""
    original_source_bytes = device_module.endpoint_source_bytes
    original_check_mac2 = cookie_module.CookieChecker.check_mac2
    zero = bytes(16)

    def check_mac2_zero_first(
        self: cookie_module.CookieChecker, message: bytes | bytearray | memoryview, source: bytes, now: float
    ) -> bool:
        if len(message) == 148 and message[132:148] == zero:
            return False  # no cookie was used: a valid mac2 of all zeros has probability 2^-128
        return original_check_mac2(self, message, source, now)

    def measure(name: str) -> float:
        try:
            if name != "as is":
                device_module.endpoint_source_bytes = _source_bytes_inet_pton
            if name == "inet_pton + zero mac2":
                cookie_module.CookieChecker.check_mac2 = check_mac2_zero_first  # type: ignore[method-assign]
            return core_cost_us("valid", rounds=1)
        finally:
            device_module.endpoint_source_bytes = original_source_bytes
            cookie_module.CookieChecker.check_mac2 = original_check_mac2  # type: ignore[method-assign]

    names = {"as is": "valid mac1, as is", "inet_pton": "valid mac1, source bytes with inet_pton",
             "inet_pton + zero mac2": "valid mac1, + zero mac2 refused without MACs"}
    best = dict.fromkeys(names, float("inf"))
    bad = float("inf")
    for _ in range(rounds):
        for name in names:
            best[name] = min(best[name], measure(name))
        bad = min(bad, core_cost_us("badmac1", rounds=1))
    out = {label: best[name] for name, label in names.items()}
    out["bad mac1, as is"] = bad
    return out


# --- comparison: wgpyd without handshake steering (one socket per family, as before wgpy/linux/udp.py steered) ---


def run_unsteered_wgpyd(argv: list[str]) -> int:
    """wgpyd with handshake steering switched off: data and handshake messages share one socket per family.
    For the comparison only (it changes UdpSocket's default in this process, leaves the repository alone)."""
    from wgpy.daemon.main import main as wgpyd_main
    from wgpy.linux import udp

    original_init = udp.UdpSocket.__init__

    def init(self: udp.UdpSocket, port: int = 0, fwmark: int = 0, offload: bool = True, steer: bool = True) -> None:
        original_init(self, port, fwmark, offload, steer=False)

    udp.UdpSocket.__init__ = init  # type: ignore[method-assign]
    return wgpyd_main(argv)


def table(results: Results) -> str:
    head = ("server", "flood", "offered/s", "delivered/s", "sock drops", "cookies→src", "max/src", "bound/src",
            "under load",
            "DH fails", "CPU %", "RSS MiB", "TCP Gbit/s", "ping ms", "ping lost")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results.rows:
        cells = (r.server, r.flood, f"{r.offered_per_s:,.0f}", f"{r.delivered_per_s:,.0f}", f"{r.rcvbuf_drops:,}",
                 f"{r.cookies_at_sources:,}", str(r.cookies_per_source_max), f"{r.cookie_bound:.0f}",
                 str(r.under_load_periods) if r.server.startswith(WGPYD) else "n/a",
                 str(r.dh_failures) if r.server.startswith(WGPYD) else "n/a", f"{r.server_cpu_pct:.0f}",
                 f"{r.server_rss_mib:.1f}", f"{r.tcp_gbps:.2f}", f"{r.ping_avg_ms:.2f}",
                 f"{r.ping_lost}/{r.ping_sent}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| server | flood mode | offered | delivered | CPU s | µs per delivered message |",
              "|---|---|---|---|---|---|"]
    for c in results.costs:
        lines.append(f"| {c.server} | {c.mode} | {c.offered:,} | {c.delivered:,} | {c.cpu_s:.2f} | "
                     f"{c.us_per_message:.1f} |")
    if results.core_us:
        lines += ["", "protocol core alone (Device.receive, in process, under load, 250 sources):"]
        lines += [f"  {us:6.2f} µs/message  {name}" for name, us in results.core_us.items()]
    if results.profile:
        lines += ["", "wgpyd hot spots under the flat-out flood (py-spy, % of samples):"]
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in results.profile]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--servers", default=f"{WGPYD},{WIREGUARD_GO}",
                        help=f"comma-separated: {WGPYD}, {WIREGUARD_GO}, {UNSTEERED} (wgpyd, one socket per family)")
    parser.add_argument("--unsteered-wgpyd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.unsteered_wgpyd is not None:
        return run_unsteered_wgpyd(args.unsteered_wgpyd)
    iperf_s, ping_n, cost_s = (2, 10, 1.5) if args.quick else (5, 30, 3.0)
    results = Results(f"{platform.node()} {os.cpu_count()} CPUs {platform.release()}",
                      time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    tmp = Path(tempfile.mkdtemp(prefix="wgpy-flood-"))
    for kind in args.servers.split(","):
        with lab() as the_lab:
            if kind == UNSTEERED:
                fl = flood_lab(the_lab, WGPYD,
                               command=f"{sys.executable} {Path(__file__).resolve()} --unsteered-wgpyd")
                fl.label = UNSTEERED
            else:
                fl = flood_lab(the_lab, kind)
            for name, mode, rate, sources in (("none", None, 0.0, 250), ("25k/s", "valid", 25000.0, 250),
                                              ("25k/s, 65k sources", "valid", 25000.0, 65000),
                                              ("flat out", "valid", 0.0, 250)):
                prof = tmp / f"{kind}.raw" if args.profile and kind == WGPYD and name == "flat out" else None
                row = measure(fl, name, mode, rate, iperf_s, ping_n, prof, sources)
                results.rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
                if prof is not None and prof.exists():
                    results.profile = hot_spots(prof)
                    results.profile += [(f"[inclusive] {k}", v) for k, v in inclusive(
                        prof, ["receive", "_receive_handshake_message", "check_mac1", "check_mac2",
                               "endpoint_source_bytes", "create_reply", "allow", "recv_batch", "_under_load",
                               "send_batch", "flush", "write_packets", "send"]).items()]
                time.sleep(1.5)  # the under-load state and rate-limiter entries expire between measurements
            for mode in ("valid", "badmac1", "garbage"):
                cost = mode_cost(fl, mode, 25000.0, cost_s)
                results.costs.append(cost)
                print(json.dumps(asdict(cost)), flush=True)
                time.sleep(1.5)
    results.core_us = core_costs()
    print()
    print(f"{results.machine}, {results.date}; 250 spoofed sources unless said, iperf3 {iperf_s} s one TCP stream "
          f"C->S, {ping_n} pings at 0.1 s, flood running before and during both")
    print(table(results))
    out = ROOT / "bench" / "results" / f"flood-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(asdict(results), indent=1))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
