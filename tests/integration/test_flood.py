"""A handshake flood from many spoofed sources against a wgpyd that also carries a live tunnel to wireguard-go.

Three namespaces: the server S (wgpyd), a wireguard-go client C with a live tunnel to S, and the flooder F. F sends
initiations with a valid mac1 (``tools/flood.py``, raw socket) from 250 spoofed addresses in 198.19.0.0/16; S
routes that /16 back to F, where it is a local route, so a listener in F counts every reply per spoofed source.

What must hold (functional properties only; the figures are in bench/bench_flood.py):
- S goes under load and answers with cookie replies, at most burst + rate x time per spoofed source;
- S never answers a flood source with a handshake response, and does Diffie-Hellman for at most the messages that
  arrive before it is under load (the window the under-load detection needs);
- the live tunnel keeps working: pings sent during the flood come back (at least two in three: losses depend on
  how much CPU the shared machine leaves the daemon; the bench measures them), and the daemon is alive afterwards;
- bad-mac1 and garbage floods are dropped as such and never put S under load.
The helpers here (``FloodLab``) are shared with bench/bench_flood.py.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_daemon_lab import (
    WGPYD,
    WIREGUARD_GO,
    Node,
    interface_block,
    peer_block,
    wait_until,
)
from tests.netns import Lab, Namespace, netlab  # noqa: F401  (the fixture)
from tools import flood as flood_tool
from tools.flood import datagram
from tools.loadgen import client_address, client_keys
from wgpy import keys
from wgpy.protocol.constants import PACKETS_BURSTABLE, PACKETS_PER_SECOND

ROOT = Path(__file__).resolve().parents[2]
TOOLS_ENV = {"PYTHONPATH": str(ROOT)}
SPOOF_NET = "198.19.0.0/16"
SPOOF_PORT = 40000
SERVER_FLOOD_ADDR = "198.18.2.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# Tunables().under_load_handshakes: the mac1-valid handshake messages per second before the device is under load.
UNDER_LOAD_HANDSHAKES = 1024


def read_stats(node: Node) -> dict[str, int]:
    """wgpyd's ``wgpy_stats=1`` UAPI extension as a dict (drop counters are prefixed ``drop_``)."""
    out = {}
    for line in node.uapi("wgpy_stats=1\n\n").splitlines():
        key, sep, value = line.partition("=")
        if sep and key != "errno" and value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def udp_rcvbuf_errors(ns: Namespace) -> int:
    """The namespace's UDP receive-buffer drops (datagrams the daemon did not read in time)."""
    lines = ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    for head, values in itertools.pairwise(lines):
        if head.startswith("Udp:") and values.startswith("Udp:"):
            table = dict(zip(head.split()[1:], values.split()[1:], strict=True))
            return int(table.get("RcvbufErrors", 0))
    return 0


def parse_ping(text: str) -> tuple[int, int, float]:
    """(transmitted, received, average ms) from ping's summary."""
    sent = received = 0
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if m:
        sent, received = int(m.group(1)), int(m.group(2))
    avg = 0.0
    m = re.search(r"= [\d.]+/([\d.]+)/", text)
    if m:
        avg = float(m.group(1))
    return sent, received, avg


@dataclass
class FloodLab:
    server: Node
    client: Node
    flooder: Namespace
    label: str = WGPYD  # what serves the tunnel (the server's kind, or an experiment's name)
    has_stats: bool = True  # the server answers wgpy_stats=1 (wgpyd)

    @property
    def server_pid(self) -> int:
        pids = self.server.pids()
        assert len(pids) == 1, pids
        return pids[0]

    def listener(self, seconds: float) -> subprocess.Popen[bytes]:
        proc = self.flooder.popen(
            ["python3", "-m", "tools.flood", "listen", "--port", str(SPOOF_PORT), "--seconds", str(seconds)],
            env=TOOLS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        return proc

    def flood_args(self, mode: str, rate: float, seconds: float, sources: int = 250) -> list[str]:
        return [
            "python3", "-m", "tools.flood", "send", "--target", f"{SERVER_FLOOD_ADDR}:{self.server.port}",
            "--server-key", self.server.public, "--mode", mode, "--rate", str(rate), "--seconds", str(seconds),
            "--sources", str(sources), "--source-net", SPOOF_NET, "--source-port", str(SPOOF_PORT),
        ]

    def flood(self, mode: str, rate: float, seconds: float, sources: int = 250) -> dict[str, float]:
        out = self.flooder.run(self.flood_args(mode, rate, seconds, sources), env=TOOLS_ENV,
                               timeout=seconds + 60)
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def flood_lab(lab: Lab, server_kind: str = WGPYD, log_level: str = "error", command: str | None = None) -> FloodLab:
    """The three namespaces and the live tunnel. ``command`` replaces the server's executable (same arguments),
    e.g. a patched wgpyd for an experiment; ``server_kind`` still says what it is."""
    s, c, f = lab.namespace(), lab.namespace(), lab.namespace()
    lab.veth(s, ["198.18.1.1/24"], c, ["198.18.1.2/24"])
    lab.veth(s, [f"{SERVER_FLOOD_ADDR}/24"], f, ["198.18.2.2/24"])
    # Replies to the spoofed sources go back to F, which takes the whole /16 as local addresses.
    s.run(["ip", "route", "add", SPOOF_NET, "via", "198.18.2.2"])
    s.run(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
    f.run(["ip", "route", "add", "local", SPOOF_NET, "dev", "lo"])
    server = Node(s, lab.interface(), server_kind, "198.18.1.1", "", "10.0.0.1", "fd00:a::1")
    client = Node(c, lab.interface(), WIREGUARD_GO, "198.18.1.2", "", "10.0.0.2", "fd00:a::2")
    if command is not None:
        server.kind = command  # Node.start runs "<kind> <iface>"; the log file keeps its name
    server.start(extra_env={"LOG_LEVEL": log_level})
    client.start(extra_env={"LOG_LEVEL": "error"})
    server.setconf(interface_block(server) + peer_block(client, f"{client.inner4}/32,{client.inner6}/128"))
    client.setconf(interface_block(client)
                   + peer_block(server, f"{server.inner4}/32,{server.inner6}/128", f"{server.outer4}:{server.port}"))
    client.ns.wait_ping(server.inner4, 20)
    # iperf3's server for the benchmark's throughput figures (ended by PID with the lab).
    s.popen(["iperf3", "-s", "-B", server.inner4], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return FloodLab(server, client, f, server_kind if command is None else f"{server_kind} (patched)",
                    server_kind == WGPYD)


def handled(stats: dict[str, int]) -> int:
    """Every handshake message the daemon has dealt with (each ends in exactly one of these counters)."""
    return sum(stats.get(k, 0) for k in ("drop_bad_mac1", "drop_bad_mac2", "drop_rate_limited",
                                          "drop_handshake_failed", "handshake_responses_sent"))


def wait_drained(node: Node, quiet: float = 0.3, limit: float = 30.0) -> float:
    """Wait until the daemon's handshake counters stop moving; return the monotonic time they last moved."""
    last, moved = handled(read_stats(node)), time.monotonic()
    deadline = moved + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_count = handled(read_stats(node))
        if now_count != last:
            last, moved = now_count, time.monotonic()
        elif time.monotonic() - moved >= quiet:
            break
    return moved


def delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


pytestmark = pytest.mark.netns
# Where a datagram that fails a check before any public-key operation ends up.
CHEAP_DROPS = ("drop_bad_mac1", "drop_malformed", "drop_unknown_type", "drop_unknown_index", "drop_cookie_rejected")


def test_valid_mac1_flood_gets_rate_limited_cookies_and_tunnel_survives(netlab: Lab) -> None:  # noqa: F811
    lab = flood_lab(netlab)
    pid = lab.server_pid
    rss_before = proc_rss_kib(pid)
    before = read_stats(lab.server)
    seconds = 4.0
    listener = lab.listener(seconds + 4)
    ping = lab.client.ns.popen(["ping", "-c", "15", "-i", "0.2", "-W", "3", lab.server.inner4],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    start = time.monotonic()
    result = lab.flood("valid", 25000, seconds)
    # The rate limiter runs on the daemon's clock: its window ends when the daemon has worked through what was
    # still queued in its socket when the flood stopped.
    flood_time = wait_drained(lab.server) - start
    ping_out, _ = ping.communicate(timeout=30)
    listener.terminate()
    got_out, _ = listener.communicate(timeout=15)
    after = read_stats(lab.server)
    replies = json.loads(got_out.decode().strip().splitlines()[-1])
    report = f"flood={result} replies={replies} stats_delta=" + str(
        {k: delta(after, before, k) for k in after if delta(after, before, k)})

    assert result["sent"] > 10000, report
    # Under load, with cookie replies sent and the rest of the flood refused on mac2.
    assert delta(after, before, "under_load_periods") >= 1, report
    assert delta(after, before, "cookie_replies_sent") > 0, report
    assert delta(after, before, "drop_bad_mac2") > 0, report
    # Cookie replies are rate-limited per spoofed source: at most the burst plus the rate over the flood's length.
    bound = PACKETS_BURSTABLE + PACKETS_PER_SECOND * (flood_time + 1.0)
    assert replies["by_type"].get("3", 0) > 0, report
    assert replies["per_source_max"] <= bound, report
    # Never a handshake response to a flood source; DH only before the device knew it was under load.
    assert replies["by_type"].get("2", 0) == 0, report
    assert set(replies["by_type"]) <= {"3"}, report
    assert delta(after, before, "handshake_responses_sent") <= 2, report  # the live peer may rekey, nobody else
    assert delta(after, before, "drop_handshake_failed") <= UNDER_LOAD_HANDSHAKES, report
    # The live tunnel lost no ping: the flood went to the steered handshake socket, whatever of it the daemon did
    # not read in time was dropped there by the kernel, and the data socket's queue never overflowed.
    assert after["udp_handshake_steering"] == 1, report
    assert delta(after, before, "udp_data_queue_drops") == 0, report
    sent, received, _avg = parse_ping(ping_out.decode())
    assert sent == 15 and received == 15, ping_out.decode() + report
    assert lab.server.pids() == [pid]
    assert lab.client.ns.ping(lab.server.inner4).returncode == 0
    # Memory bounded: the per-source tables are bounded (65,536 entries) and 250 sources need little.
    assert proc_rss_kib(pid) - rss_before < 64 * 1024, (rss_before, proc_rss_kib(pid))


@pytest.mark.parametrize("mode", ["badmac1", "garbage"])
def test_bad_mac1_and_garbage_floods_are_dropped_without_load(netlab: Lab, mode: str) -> None:  # noqa: F811
    lab = flood_lab(netlab)
    before = read_stats(lab.server)
    listener = lab.listener(6)
    result = lab.flood(mode, 10000, 2.0)
    listener.terminate()
    got_out, _ = listener.communicate(timeout=15)
    after = read_stats(lab.server)
    replies = json.loads(got_out.decode().strip().splitlines()[-1])
    changed = {k: delta(after, before, k) for k in after if delta(after, before, k)}
    report = f"flood={result} replies={replies} stats_delta={changed}"
    assert result["sent"] > 5000, report
    # Nothing answered, nothing processed beyond the cheap checks, never under load.
    assert replies["total"] == 0, report
    assert delta(after, before, "under_load_periods") == 0, report
    assert delta(after, before, "cookie_replies_sent") == 0, report
    assert delta(after, before, "drop_handshake_failed") == 0, report
    cheap = sum(delta(after, before, k) for k in CHEAP_DROPS)
    assert cheap > 0, report
    if mode == "badmac1":
        assert delta(after, before, "drop_bad_mac1") == cheap, report
    assert lab.client.ns.ping(lab.server.inner4).returncode == 0


def test_replayed_transport_messages_are_dropped_and_change_nothing(netlab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """Transport messages captured on the wire and sent again from their own (spoofed) source address, to another
    of the server's addresses: every copy is dropped by the replay window, nothing is delivered twice, and the
    tunnel is unaffected (no roaming, no change of the address replies leave from)."""
    lab = flood_lab(netlab)
    s, c = lab.server, lab.client
    veth = s.ns.run(["ip", "-o", "-4", "addr", "show", "to", s.outer4]).stdout.split()[1]
    capture_file = str(tmp_path / "capture.jsonl")
    capture = s.ns.popen(
        ["python3", "-m", "tools.flood", "capture", "--iface", veth, "--port", str(s.port), "--count", "300",
         "--seconds", "20", "--out", capture_file],
        env=TOOLS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert capture.stdout is not None and capture.stdout.readline().strip() == b"ready"
    flows = []
    for node, other in ((s, c), (c, s)):
        proc = node.ns.popen(
            ["python3", "-m", "tools.loadgen", "flow", "--bind", node.inner4, "--peer", other.inner4, "--rate", "150",
             "--seconds", "8", "--grace", "3"],
            env=TOOLS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        flows.append(proc)
    out, err = capture.communicate(timeout=30)
    assert json.loads(out.decode().strip().splitlines()[-1])["captured"] == 300, err.decode()
    before = read_stats(s)
    endpoints_before = s.wg("show", s.iface, "endpoints").stdout
    # From F, to S's address on F's link, with C's address and port as the source: three times each.
    replay = lab.flooder.run(
        ["python3", "-m", "tools.flood", "replay", "--file", capture_file, "--target", f"{SERVER_FLOOD_ADDR}:{s.port}",
         "--times", "3"], env=TOOLS_ENV,
    )
    replayed = json.loads(replay.stdout.strip().splitlines()[-1])["replayed"]
    assert replayed == 900
    results = []
    for proc in flows:
        got, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(got.decode().strip().splitlines()[-1]))
    after = read_stats(s)
    changed = {k: delta(after, before, k) for k in after if delta(after, before, k)}
    report = f"flows={results} stats_delta={changed}"
    assert delta(after, before, "drop_replay") == replayed, report
    assert delta(after, before, "drop_decrypt_failed") == 0, report
    for flow in results:
        assert flow["duplicates"] == 0 and flow["foreign"] == 0, report
    # The flows kept going to the end in both directions, the endpoint did not move, and pings still work.
    for flow in results:
        assert flow["highest"] >= 0.9 * flow["sent"], report
    assert s.wg("show", s.iface, "endpoints").stdout == endpoints_before
    assert c.ns.ping(s.inner4).returncode == 0, report
    assert s.ns.ping(c.inner4).returncode == 0, report


def test_spoofed_datagram_does_not_move_the_reply_source(netlab: Lab) -> None:  # noqa: F811
    """One unauthenticated datagram with the client's address and port as its (spoofed) source, sent to another of
    the server's addresses, must not change anything for that client: Linux and wireguard-go learn a peer's
    endpoint, and the local address they answer it from, only from authenticated packets. If the server remembered
    the local address of any datagram, its next packets to the client would leave from the address the attacker
    picked, and the client would roam to it (and lose the tunnel where that address is not reachable)."""
    lab = flood_lab(netlab)
    s, c = lab.server, lab.client
    seen_before = c.wg("show", c.iface, "endpoints").stdout
    assert f"{s.outer4}:{s.port}" in seen_before
    spoofed = datagram(ipaddress.IPv4Address(c.outer4), c.port, ipaddress.IPv4Address(SERVER_FLOOD_ADDR), s.port,
                       b"\x09not wireguard")
    sender = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW); "
              f"s.sendto(bytes.fromhex('{spoofed.hex()}'), ('{SERVER_FLOOD_ADDR}', 0))")
    before = read_stats(s)
    lab.flooder.run(["python3", "-c", sender])
    wait_until(lambda: delta(read_stats(s), before, "drop_unknown_type") == 1, 10, "the datagram to be dropped")
    # The server speaks first after the spoofed datagram, then the client answers.
    assert s.ns.ping(c.inner4).returncode == 0
    assert c.ns.ping(s.inner4).returncode == 0
    assert c.wg("show", c.iface, "endpoints").stdout == seen_before, "the client now sees the server elsewhere"


def test_flood_tool_builds_what_it_claims() -> None:
    """tools/flood.py's messages: valid mac1 passes wgpy's own check, bad mac1 and garbage do not; every datagram
    carries its spoofed source and is refused outside 198.18.0.0/15."""
    from wgpy.protocol.cookie import CookieChecker
    from wgpy.protocol.crypto import public_key
    from wgpy.protocol.noise import LocalStatic
    from wgpy.protocol.rng import SystemRandomSource

    private = bytes(range(1, 33))
    checker = CookieChecker(LocalStatic.from_private(private), SystemRandomSource())
    target = (ipaddress.IPv4Address(SERVER_FLOOD_ADDR), 51820)
    sources = flood_tool.spoofed_sources(SPOOF_NET, 50)
    assert len(set(sources)) == 50 and all(ip in ipaddress.IPv4Network(SPOOF_NET) for ip in sources)
    for mode, valid in (("valid", True), ("badmac1", False), ("garbage", False)):
        packets = flood_tool.build(mode, public_key(private), target, sources, SPOOF_PORT, 200, seed=1)
        assert len(packets) == 200
        for i, packet in enumerate(packets):
            assert packet[12:16] == sources[i % 50].packed and packet[16:20] == target[0].packed
            payload = packet[28:]
            assert checker.check_mac1(payload) is valid, (mode, i)
    with pytest.raises(SystemExit):
        flood_tool.spoofed_sources("192.0.2.0/24", 10)
    with pytest.raises(SystemExit):
        flood_tool.check_address("192.0.2.1")


def test_new_clients_get_through_with_cookies_during_a_flood(netlab: Lab) -> None:  # noqa: F811
    """While a spoofed valid-mac1 flood keeps wgpyd under load, 20 new WireGuard clients (tools/loadgen.py, each
    with its own address) still complete their handshakes: their first initiation gets a cookie reply, the retry
    carries a valid mac2 and passes the per-address rate limiter. Their pings are then answered."""
    lab = flood_lab(netlab)
    s = lab.server
    s.ns.run(["ip", "route", "add", "10.1.0.0/16", "dev", s.iface])
    count = 20
    seed = os.urandom(16)
    conf = "".join(f"[Peer]\nPublicKey = {keys.to_base64(public)}\nAllowedIPs = {client_address(i)}/32\n"
                   for i, (_private, public) in enumerate(client_keys(seed, count)))
    s.wg("addconf", s.iface, "/dev/stdin", input=conf)
    before = read_stats(s)
    flood = lab.flooder.popen(lab.flood_args("valid", 25000, 25), env=TOOLS_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    wait_until(lambda: delta(read_stats(s), before, "under_load_periods") >= 1, 15, "wgpyd to be under load")
    out = lab.flooder.run(
        ["python3", "-m", "tools.loadgen", "clients", "--server", f"{SERVER_FLOOD_ADDR}:{s.port}", "--server-key",
         s.public, "--seed", seed.hex(), "--count", str(count), "--bind", "198.19.250.0/24", "--pings", "2",
         "--handshake-rate", "0", "--seconds", "20"],
        env=TOOLS_ENV, timeout=90,
    )
    flood_out, _ = flood.communicate(timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    after = read_stats(s)
    changed = {k: delta(after, before, k) for k in after if delta(after, before, k)}
    report = f"clients={result} flood={flood_out.decode().strip()} stats_delta={changed}"
    assert result["complete"] == count and result["failed_count"] == 0, report
    assert result["cookie_replies_received"] >= count, report  # each went through the cookie dance
    assert delta(after, before, "handshake_responses_sent") >= count, report
    assert delta(after, before, "cookie_replies_sent") > result["cookie_replies_received"], report  # flood too
