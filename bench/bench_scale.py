"""Scale benchmark: 10,000 configured peers on one daemon, wgpyd and wireguard-go side by side.

    python3 bench/bench_scale.py                 # 10,000 peers, 1000 of them active
    python3 bench/bench_scale.py --peers 2000 --active 200

For each daemon (in its own namespace, fed by the same ``wg setconf``):
  - RSS with no peer, with N configured peers (KiB per peer), and after ``--active`` of them completed a handshake
    and pinged (KiB per active session); the active clients are tools/loadgen.py clients in another namespace
    (own key, own source port), started at 200 handshakes/s;
  - time of ``wg setconf`` (N peers), ``wg show IFACE`` and ``wg showconf IFACE`` (Debian's wg over the UAPI);
  - time for the active clients to all complete their handshake and get their echo replies;
and, in this process, the cost of one allowed-IPs lookup (wgpy.protocol.allowedips, ``lookup_dst`` on a packet)
with 1 and with N peers of one /32 each (bench/bench_allowedips.py has the full study). Prints a table and writes
JSON under bench/results/. Traffic only inside its own namespaces; everything removed at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO, Node  # noqa: E402
from tests.integration.test_flood import proc_rss_kib  # noqa: E402
from tests.integration.test_scale import LOADGEN_OUTER, SERVER_OUTER, ScaleLab  # noqa: E402
from tests.netns import Lab, lab  # noqa: E402
from tools.loadgen import client_address, client_keys  # noqa: E402
from wgpy.protocol.allowedips import AllowedIPs  # noqa: E402


@dataclass
class ScaleResult:
    daemon: str
    peers: int
    active: int
    rss_empty_kib: int = 0
    rss_configured_kib: int = 0
    rss_active_kib: int = 0
    kib_per_peer: float = 0.0
    kib_per_session: float = 0.0
    setconf_s: float = 0.0
    show_s: float = 0.0
    showconf_s: float = 0.0
    active_s: float = 0.0
    active_ok: int = 0


def timed(fn: object) -> float:
    t = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - t


def settle_rss(pid: int) -> int:
    time.sleep(1.0)
    return proc_rss_kib(pid)


def run_daemon(the_lab: Lab, kind: str, seed: bytes, publics: list[bytes], active: int) -> ScaleResult:
    s, g = the_lab.namespace(), the_lab.namespace()
    the_lab.veth(s, [f"{SERVER_OUTER}/24"], g, [f"{LOADGEN_OUTER}/24"])
    server = Node(s, the_lab.interface(), kind, SERVER_OUTER, "", "10.0.0.1", "fd00:a::1")
    server.start(extra_env={"LOG_LEVEL": "error"})
    s.run(["ip", "route", "add", "10.1.0.0/16", "dev", server.iface])
    sl = ScaleLab(server, g, seed, publics)
    n = len(publics)
    result = ScaleResult(kind, n, active)
    pid = server.pids()[0]
    sl.configure(0, 0, command="setconf")
    result.rss_empty_kib = settle_rss(pid)
    result.setconf_s = timed(lambda: sl.configure(0, n, command="setconf"))
    result.rss_configured_kib = settle_rss(pid)
    result.show_s = timed(lambda: server.wg("show", server.iface))
    result.showconf_s = timed(lambda: server.wg("showconf", server.iface))
    if active:
        t = time.monotonic()
        out = sl.run_clients(active, first=n - active, pings=2, rate=200.0, seconds=300.0)
        result.active_s = time.monotonic() - t
        result.active_ok = int(out["complete"])  # type: ignore[call-overload]
        result.rss_active_kib = settle_rss(pid)
        result.kib_per_session = (result.rss_active_kib - result.rss_configured_kib) / active
    result.kib_per_peer = (result.rss_configured_kib - result.rss_empty_kib) / n
    return result


def lookup_cost(peers: int, lookups: int = 200_000) -> tuple[float, float]:
    """µs per ``lookup_dst`` of an IPv4 packet with 1 and with ``peers`` peers of one /32 each."""
    out = []
    for count in (1, peers):
        table: AllowedIPs[int] = AllowedIPs()
        for i in range(count):
            table.insert(ipaddress.ip_network(f"{client_address(i)}/32"), i)
        rng = random.Random(1)
        packets = []
        for _ in range(1000):
            dst = ipaddress.IPv4Address(client_address(rng.randrange(count))).packed
            packets.append(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 0, 0, 64, 1, 0, bytes(4), dst) + bytes(64))
        lookup = table.lookup_dst
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(lookups // 1000):
                for p in packets:
                    lookup(p)
            best = min(best, time.perf_counter() - t)
        out.append(1e6 * best / lookups)
    return out[0], out[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--daemons", default=f"{WGPYD},{WIREGUARD_GO}")
    args = parser.parse_args()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    seed = os.urandom(16)
    t = time.monotonic()
    publics = [public for _private, public in client_keys(seed, args.peers)]
    print(f"{args.peers} keys derived in {time.monotonic() - t:.1f} s", flush=True)
    results = []
    for kind in args.daemons.split(","):
        with lab() as the_lab:
            r = run_daemon(the_lab, kind, seed, publics, args.active)
        results.append(r)
        print(json.dumps(asdict(r)), flush=True)
    one, many = lookup_cost(args.peers)
    print()
    print(f"{platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, {date}; "
          f"{args.peers} configured peers (one /32 each), {args.active} active")
    head = ("daemon", "RSS empty MiB", f"RSS {args.peers} peers MiB", "KiB/peer", f"RSS +{args.active} sessions MiB",
            "KiB/session", "wg setconf s", "wg show s", "wg showconf s", f"{args.active} clients up s", "ok")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        print(f"| {r.daemon} | {r.rss_empty_kib / 1024:.1f} | {r.rss_configured_kib / 1024:.1f} | "
              f"{r.kib_per_peer:.2f} | {r.rss_active_kib / 1024:.1f} | {r.kib_per_session:.2f} | {r.setconf_s:.2f} | "
              f"{r.show_s:.2f} | {r.showconf_s:.2f} | {r.active_s:.1f} | {r.active_ok}/{r.active} |")
    print(f"\nallowed-IPs lookup_dst (IPv4 packet, in-process): {one:.3f} µs with 1 peer, {many:.3f} µs with "
          f"{args.peers} peers")
    out = ROOT / "bench" / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": date, "results": [asdict(r) for r in results],
                               "lookup_us": {"1": one, str(args.peers): many}}, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
