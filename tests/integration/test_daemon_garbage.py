"""Hostile datagrams: garbage, truncated, oversized, wrong-type and replayed messages leave wgpyd running, the
tunnel working, and every one of them counted (wgpyd's ``wgpy_stats=1`` UAPI extension)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO, Node, make_pair
from tests.netns import Lab, lab

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def stats(node: Node) -> dict[str, int]:
    answer = node.uapi("wgpy_stats=1\n\n")
    assert answer.endswith("errno=0\n\n")
    return {k: int(v) for k, v in (line.split("=", 1) for line in answer.splitlines() if line) if k != "errno"}


SNIFF = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
s.settimeout(30)
print("ready", flush=True)
while True:
    frame = s.recv(65535)
    ethertype, ip = frame[12:14], frame[14:]
    if ethertype == b"\x08\x00" and ip[9] == 17:
        udp = ip[(ip[0] & 15) * 4:]
    elif ethertype == b"\x86\xdd" and ip[6] == 17:
        udp = ip[40:]
    else:
        continue
    payload = udp[8:]
    if int.from_bytes(udp[2:4], "big") == 51820 and payload[:1] == b"\x04" and len(payload) >= 64:
        print(payload.hex(), flush=True)
        break
"""

# Every datagram here must be dropped and counted once. (type byte, then whatever follows)
GARBAGE = r"""
import os, socket, sys
host, port, replay = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
def z(n): return bytes(n)
datagrams = [
    b"\x01",                                                # truncated: type only
    b"\x01" + z(3) + os.urandom(100),                       # initiation of the wrong length
    b"\x01" + z(3) + os.urandom(144),                       # initiation, right length, bad mac1
    b"\x01\x01\x00\x00" + os.urandom(144),                  # reserved bytes not zero
    b"\x02" + z(3) + os.urandom(88),                        # response to nothing / bad mac1
    b"\x03" + z(3) + os.urandom(60),                        # cookie reply for nothing
    b"\x04" + z(3) + os.urandom(12),                        # transport shorter than its header
    b"\x04" + z(3) + os.urandom(60),                        # transport with an unknown index
    b"\x05" + z(3) + os.urandom(60),                        # unknown type
    b"\xff" * 10,                                           # garbage
    os.urandom(65000),                                      # oversized
    replay, replay, replay, replay, replay,                 # replays of a genuine transport message
]
s.sendto(b"", (host, port))                                 # an empty datagram (counted or ignored)
for d in datagrams:
    s.sendto(d, (host, port))
print(len(datagrams), flush=True)
"""


@pytest.mark.parametrize("family", ["4", "6"])
def test_garbage_and_replays_are_dropped_and_counted(netlab: Lab, family: str) -> None:
    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO, family=family)
    a.ns.wait_ping(b.inner4, 20)
    veth = a.ns.run(["ip", "-o", "-4", "addr", "show", "to", a.outer4]).stdout.split()[1]
    sniffer = a.ns.popen(["python3", "-c", SNIFF, veth], stdout=subprocess.PIPE)
    assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == b"ready"
    b.ns.run(["ping", "-c", "3", "-i", "0.2", a.inner4])
    genuine = sniffer.stdout.readline().decode().strip()
    sniffer.wait(timeout=10)
    assert genuine, "no transport message seen"
    before = stats(a)
    target = a.outer4 if family == "4" else a.outer6
    sent = int(b.ns.run(["python3", "-c", GARBAGE, target, str(a.port), genuine]).stdout)
    a.ns.wait_ping(b.inner4, 10)  # the daemon runs and the tunnel works
    after = stats(a)
    assert len(a.pids()) == 1
    delta = {k: after[k] - before.get(k, 0) for k in after if k.startswith("drop_")}
    assert sum(delta.values()) >= sent, delta
    assert delta["drop_replay"] >= 5, delta
    assert delta["drop_unknown_index"] >= 1, delta
    assert delta["drop_bad_mac1"] >= 1, delta
    assert delta["drop_malformed"] + delta["drop_unknown_type"] >= 5, delta
