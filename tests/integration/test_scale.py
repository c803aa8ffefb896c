"""1000 peers on one wgpyd, each a real WireGuard client driven by tools/loadgen.py from one process in another
namespace: its own key, its own UDP socket (source port) and inner address. Every client completes a handshake and
gets answers to its ICMP echo requests, which the server's kernel answers through wgpyd's TUN.

The helpers here (``ScaleLab``) are shared with bench/bench_scale.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from tests.integration.test_daemon_lab import WGPYD, Node, interface_block
from tests.integration.test_flood import TOOLS_ENV, read_stats
from tests.netns import Lab, Namespace, netlab  # noqa: F401  (the fixture)
from tools.loadgen import client_address, client_keys
from wgpy import keys

SERVER_OUTER = "198.18.3.1"
LOADGEN_OUTER = "198.18.3.2"


@dataclass
class ScaleLab:
    server: Node
    loadgen: Namespace
    seed: bytes
    publics: list[bytes]

    def configure(self, first: int, count: int, command: str = "addconf") -> None:
        """Add peers first..first+count-1 (their keys from the seed, allowed IP their inner /32)."""
        lines = [] if command == "addconf" else [interface_block(self.server)]
        for i in range(first, first + count):
            public = keys.to_base64(self.publics[i])
            lines.append(f"[Peer]\nPublicKey = {public}\nAllowedIPs = {client_address(i)}/32\n")
        self.server.wg(command, self.server.iface, "/dev/stdin", input="".join(lines))

    def run_clients(self, count: int, first: int = 0, pings: int = 3, rate: float = 200.0,
                    seconds: float = 240.0) -> dict[str, object]:
        out = self.loadgen.run(
            ["python3", "-m", "tools.loadgen", "clients", "--server", f"{SERVER_OUTER}:{self.server.port}",
             "--server-key", self.server.public, "--seed", self.seed.hex(), "--count", str(count), "--first",
             str(first), "--bind", LOADGEN_OUTER, "--pings", str(pings), "--handshake-rate", str(rate),
             "--seconds", str(seconds)],
            env=TOOLS_ENV, timeout=seconds + 120,
        )
        result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def scale_lab(lab: Lab, peers: int, log_level: str = "error") -> ScaleLab:
    s, g = lab.namespace(), lab.namespace()
    lab.veth(s, [f"{SERVER_OUTER}/24"], g, [f"{LOADGEN_OUTER}/24"])
    server = Node(s, lab.interface(), WGPYD, SERVER_OUTER, "", "10.0.0.1", "fd00:a::1")
    server.start(extra_env={"LOG_LEVEL": log_level})
    s.run(["ip", "route", "add", "10.1.0.0/16", "dev", server.iface])
    seed = os.urandom(16)
    publics = [public for _private, public in client_keys(seed, peers)]
    the_lab = ScaleLab(server, g, seed, publics)
    the_lab.configure(0, 0, command="setconf")
    return the_lab


pytestmark = pytest.mark.netns
PEERS = 1000


def test_1000_clients_handshake_and_ping(netlab: Lab) -> None:  # noqa: F811
    lab = scale_lab(netlab, PEERS)
    lab.configure(0, PEERS)
    result = lab.run_clients(PEERS, pings=2)
    report = json.dumps(result)
    assert result["clients"] == PEERS, report
    assert result["failed_count"] == 0 and result["complete"] == PEERS, report
    assert result["distinct_source_ports"] == PEERS, report
    assert isinstance(result["handshakes_completed"], int) and result["handshakes_completed"] >= PEERS, report
    # The server saw every one of them: a handshake and a distinct endpoint per peer, traffic both ways.
    dump = lab.server.wg("show", lab.server.iface, "dump").stdout.strip().splitlines()[1:]
    assert len(dump) == PEERS
    endpoints = set()
    for line in dump:
        _pub, _psk, endpoint, _allowed, handshake, rx, tx, _keepalive = line.split("\t")
        assert int(handshake) > 0 and int(rx) > 0 and int(tx) > 0, line
        endpoints.add(endpoint)
    assert len(endpoints) == PEERS
    stats = read_stats(lab.server)
    assert stats["handshake_responses_sent"] >= PEERS, stats
    assert stats["packets_received"] >= 2 * PEERS, stats
    assert lab.server.pids(), "wgpyd is gone"


def test_loadgen_keys_addresses_and_echo() -> None:
    """The clients' keys are distinct and match what the server is configured with; the echo requests carry valid
    IPv4 and ICMP checksums (the server's kernel drops them otherwise) and their replies are recognised."""
    from tools.loadgen import checksum, client_address, client_keys, echo_request, parse_echo_reply
    from wgpy.protocol.crypto import public_key

    seed = bytes(16)
    pairs = client_keys(seed, 300)
    assert len({public for _, public in pairs}) == 300
    assert all(public_key(private) == public for private, public in pairs[:5])
    assert client_address(0) == "10.1.0.1" and client_address(299) == "10.1.1.44"
    packet = echo_request("10.1.0.1", "10.0.0.1", 7, 3)
    assert checksum(packet[:20]) == 0 and checksum(packet[20:]) == 0
    reply = bytearray(packet)
    reply[12:16], reply[16:20] = packet[16:20], packet[12:16]
    reply[20] = 0  # echo reply
    assert parse_echo_reply(bytes(reply)) == ("10.1.0.1", 7, 3)
    assert parse_echo_reply(packet) is None
