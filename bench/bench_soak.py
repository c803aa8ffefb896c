"""Soak benchmark: a wgpyd <-> wireguard-go tunnel (with PSK) carrying sequence-numbered UDP both ways for 10 minutes
(or --minutes), through natural rekeys (every 120 s), a PSK change and roaming of each side.

    python3 bench/bench_soak.py                  # 10 minutes, 1000 datagrams/s each way
    python3 bench/bench_soak.py --minutes 2 --rate 500

It reuses tests/integration/test_soak.py's ``soak``: the flows (tools/loadgen.py ``flow``) count every sequence
number they receive, so a datagram delivered twice is seen; wgpyd's RSS, open descriptors and handshake count are
sampled every 15 s. Prints the samples, the events, both flows' counts and wgpyd's counter deltas, and writes JSON
under bench/results/. Only namespaces it creates carry traffic; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.test_soak import check, soak  # noqa: E402
from tests.netns import lab  # noqa: E402

SCHEDULE = [(0.35, "psk"), (0.50, "roam-go"), (0.70, "roam-wgpyd")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="datagrams per second in each direction")
    args = parser.parse_args()
    seconds = args.minutes * 60
    if not 0 < seconds <= 3600:
        parser.error("--minutes must be in (0, 60]")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"soak: {args.minutes} min, {args.rate:.0f} datagrams/s each way; {platform.node()}, "
          f"{os.cpu_count()} CPUs, kernel {platform.release()}, {date}", flush=True)
    with lab() as the_lab:
        result, _a, _b = soak(the_lab, seconds, args.rate, SCHEDULE, sample_every=15.0,
                            log=lambda line: print(line, flush=True))
    first, warm, last = result.samples[0], result.samples[min(2, len(result.samples) - 1)], result.samples[-1]
    minutes_after_warm = max(1e-9, (last.t - warm.t) / 60)
    print()
    print("| direction | sent | received | lost | duplicates | reordered |")
    print("|---|---|---|---|---|---|")
    for name, flow in (("wgpyd -> wireguard-go", result.wgpyd_to_go), ("wireguard-go -> wgpyd", result.go_to_wgpyd)):
        print(f"| {name} | {flow['sent']:,} | {flow['received']:,} | {flow['sent'] - flow['received']:,} | "
              f"{flow['duplicates']} | {flow['reordered']} |")
    print()
    print(f"wgpyd handshakes during the run: {last.handshakes - first.handshakes}; events: {result.events}")
    print(f"wgpyd RSS: start {first.rss_kib} KiB, after warm-up {warm.rss_kib} KiB, end {last.rss_kib} KiB "
          f"({(last.rss_kib - warm.rss_kib) / minutes_after_warm:+.1f} KiB/min after warm-up); "
          f"max {max(s.rss_kib for s in result.samples)} KiB")
    print(f"wgpyd open fds: start {first.fds}, min {min(s.fds for s in result.samples)}, "
          f"max {max(s.fds for s in result.samples)}, end {last.fds}")
    print(f"wgpyd counter deltas: {result.stats_delta}")
    ok = True
    try:
        check(result, min_handshakes=max(1, int(seconds // 120) - 1))
    except AssertionError as exc:
        ok = False
        print(f"CHECK FAILED: {str(exc)[:2000]}")
    out = ROOT / "bench" / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": date, "minutes": args.minutes, **asdict(result)}, indent=1))
    print(f"written to {out}; checks {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
