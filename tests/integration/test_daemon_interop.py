"""wgpyd against Debian's wireguard-go: handshakes both ways, pings over IPv4/IPv6 inside and outside, a 50 MB
transfer checked by SHA-256 (with and without PSK), several peers with overlapping allowed IPs, roaming."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_daemon_lab import (
    WGPYD,
    WIREGUARD_GO,
    Node,
    interface_block,
    make_pair,
    peer_block,
    wait_until,
)
from tests.netns import Lab, lab

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab

TRANSFER_BYTES = 50 * 1024 * 1024

RECEIVER = r"""
import hashlib, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201))
s.listen(1)
print("ready", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"""

# Sends a deterministic pseudo-random stream; with "pause", stops half-way until a line arrives on stdin.
SENDER = r"""
import hashlib, socket, sys
total, pause = int(sys.argv[2]), sys.argv[3] == "pause"
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.create_connection((sys.argv[1], 5201), timeout=60)
h = hashlib.sha256()
block = hashlib.sha512(b"wgpy").digest() * 1024
sent, i = 0, 0
while sent < total:
    chunk = hashlib.sha256(i.to_bytes(8, "big")).digest() + block
    chunk = chunk[: total - sent]
    if pause and sent < total // 2 <= sent + len(chunk):
        print("half", flush=True)
        sys.stdin.readline()
    s.sendall(chunk)
    h.update(chunk)
    sent += len(chunk)
    i += 1
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest(), flush=True)
"""


def transfer(src: Node, dst: Node, address: str, total: int = TRANSFER_BYTES, during: object = None) -> None:
    """Send ``total`` bytes from ``src`` to ``address`` (on ``dst``) over the tunnel; hashes must match."""
    receiver = dst.ns.popen(["python3", "-c", RECEIVER, address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == b"ready"
    sender = src.ns.popen(
        ["python3", "-c", SENDER, address, str(total), "pause" if during else "go"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert sender.stdout is not None and sender.stdin is not None
    if during:
        assert sender.stdout.readline().strip() == b"half"
        during()  # type: ignore[operator]
        sender.stdin.write(b"go\n")
        sender.stdin.flush()
    sent_out, sent_err = sender.communicate(timeout=240)
    got_out, got_err = receiver.communicate(timeout=60)
    assert sender.returncode == 0, sent_err.decode() + src.logs() + dst.logs()
    assert receiver.returncode == 0, got_err.decode()
    sent = sent_out.decode().split()
    got = got_out.decode().split()
    assert sent[0] == str(total) and got == sent, (sent, got)


def latest_handshake(node: Node) -> int:
    out = node.wg("show", node.iface, "latest-handshakes").stdout.split()
    return int(out[1]) if len(out) >= 2 else 0


KINDS = [(WGPYD, WIREGUARD_GO), (WIREGUARD_GO, WGPYD)]


@pytest.mark.parametrize("family", ["4", "6"])
@pytest.mark.parametrize(("initiator", "responder"), KINDS, ids=["wgpyd-initiates", "wireguard-go-initiates"])
def test_handshake_and_ping(netlab: Lab, initiator: str, responder: str, family: str) -> None:
    """Only the initiator knows the other's endpoint: the responder learns it from the handshake."""
    a, b = make_pair(netlab, initiator, responder, family=family, b_knows_a=False)
    a.ns.wait_ping(b.inner4, 20)
    assert a.ns.ping(b.inner6).returncode == 0, a.logs() + b.logs()
    assert b.ns.ping(a.inner4).returncode == 0
    assert b.ns.ping(a.inner6).returncode == 0
    assert latest_handshake(a) > 0 and latest_handshake(b) > 0
    # The responder learnt the initiator's endpoint (its outer address of the family used).
    endpoints = b.wg("show", b.iface, "endpoints").stdout
    assert (a.outer4 if family == "4" else f"[{a.outer6}]") in endpoints


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize(("a_kind", "b_kind"), KINDS, ids=["wgpyd-sends", "wireguard-go-sends"])
def test_transfer_50mb(netlab: Lab, a_kind: str, b_kind: str, psk: bool) -> None:
    a, b = make_pair(netlab, a_kind, b_kind, psk=psk)
    a.ns.wait_ping(b.inner4, 20)
    transfer(a, b, b.inner4)
    wgpy_node = a if a_kind == WGPYD else b
    stats = wgpy_node.uapi("wgpy_stats=1\n\n")
    assert stats.endswith("errno=0\n\n") and "drop_decrypt_failed=0\n" in stats


def test_transfer_ipv6_inner_and_outer(netlab: Lab) -> None:
    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO, family="6")
    a.ns.wait_ping(b.inner6, 20)
    transfer(b, a, a.inner6, total=10 * 1024 * 1024)


def test_several_peers_overlapping_allowed_ips(netlab: Lab) -> None:
    """wgpyd with two wireguard-go peers: 10.0.0.0/16 to one, 10.0.2.0/24 (inside it) to the other."""
    hub_ns, b_ns, c_ns = netlab.namespace(), netlab.namespace(), netlab.namespace()
    netlab.veth(hub_ns, ["198.18.1.1/24"], b_ns, ["198.18.1.2/24"])
    netlab.veth(hub_ns, ["198.18.2.1/24"], c_ns, ["198.18.2.2/24"])
    hub = Node(hub_ns, netlab.interface(), WGPYD, "198.18.1.1", "", "10.0.0.1", "fd00:a::1")
    b = Node(b_ns, netlab.interface(), WIREGUARD_GO, "198.18.1.2", "", "10.0.1.2", "fd00:a::2")
    c = Node(c_ns, netlab.interface(), WIREGUARD_GO, "198.18.2.2", "", "10.0.2.3", "fd00:a::3")
    for node in (hub, b, c):
        node.start()
    b.ns.run(["ip", "route", "add", "10.0.0.0/16", "dev", b.iface])
    c.ns.run(["ip", "route", "add", "10.0.0.0/16", "dev", c.iface])
    hub.ns.run(["ip", "route", "add", "10.0.0.0/16", "dev", hub.iface])
    hub.setconf(
        interface_block(hub)
        + peer_block(b, "10.0.0.0/16,fd00:a::2/128", f"{b.outer4}:{b.port}")
        + peer_block(c, "10.0.2.0/24,fd00:a::3/128", f"{c.outer4}:{c.port}")
    )
    b.setconf(interface_block(b) + peer_block(hub, "10.0.0.0/16,fd00:a::1/128", f"198.18.1.1:{hub.port}"))
    c.setconf(interface_block(c) + peer_block(hub, "10.0.0.0/16,fd00:a::1/128", f"198.18.2.1:{hub.port}"))
    hub.ns.wait_ping(c.inner4, 20)
    hub.ns.wait_ping(b.inner4, 20)
    assert hub.ns.ping(c.inner6).returncode == 0 and hub.ns.ping(b.inner6).returncode == 0
    transfers = dict(
        line.split("\t")[:2] for line in hub.wg("show", hub.iface, "transfer").stdout.strip().splitlines()
    )
    assert int(transfers[b.public]) > 0 and int(transfers[c.public]) > 0
    # A packet from C with a source only B may use is dropped (source_not_allowed), not delivered.
    before = int(_stat(hub, "drop_source_not_allowed"))
    c.ns.run(["ip", "addr", "add", "10.0.1.99/32", "dev", c.iface])
    c.ns.run(["ping", "-c", "2", "-W", "1", "-I", "10.0.1.99", hub.inner4], check=False)
    wait_until(lambda: int(_stat(hub, "drop_source_not_allowed")) > before, 10, "the drop to be counted")


def _stat(node: Node, name: str) -> str:
    for line in node.uapi("wgpy_stats=1\n\n").splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no {name} in stats")


@pytest.mark.parametrize("mover", [WGPYD, WIREGUARD_GO])
def test_roaming_mid_transfer(netlab: Lab, mover: str) -> None:
    """The side that moves (the initiator) takes a new outer address half-way through a transfer."""
    other = WIREGUARD_GO if mover == WGPYD else WGPYD
    a, b = make_pair(netlab, mover, other, b_knows_a=False)
    a.ns.wait_ping(b.inner4, 20)
    veth = a.ns.run(["ip", "-o", "-4", "addr", "show", "to", "198.18.0.1"]).stdout.split()[1]

    # Without promote_secondaries, deleting the primary address would take the new (secondary) one with it.
    a.ns.run(["sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1",
              f"net.ipv4.conf.{veth}.promote_secondaries=1"])

    def move() -> None:
        a.ns.run(["ip", "addr", "add", "198.18.0.77/24", "dev", veth])
        a.ns.run(["ip", "addr", "del", "198.18.0.1/24", "dev", veth])
        time.sleep(0.2)

    transfer(a, b, b.inner4, total=20 * 1024 * 1024, during=move)
    assert "198.18.0.77:" in b.wg("show", b.iface, "endpoints").stdout



@pytest.mark.parametrize("family", ["4", "6"])
def test_endpoint_set_over_uapi_starts_handshake_at_once(netlab: Lab, family: str) -> None:
    """No packet waits: setting the endpoint alone makes wgpyd initiate (and the loop flush it) right away."""
    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO, family=family, a_knows_b=False, b_knows_a=False)
    assert latest_handshake(a) == 0
    a.wg("set", a.iface, "peer", b.public, "endpoint", b.endpoint(family))
    wait_until(lambda: latest_handshake(b) > 0, 3, "the handshake started by the endpoint alone")


@pytest.mark.parametrize("family", ["4", "6"])
def test_replies_from_the_address_the_peer_wrote_to(netlab: Lab, family: str) -> None:
    """wgpyd's host has two addresses; the peer writes to the second one. wireguard-go takes the source of every
    authenticated packet as the new endpoint, so if wgpyd answered from its first (primary) address, the peer's
    endpoint would move there."""
    extra = "198.18.0.11" if family == "4" else "fd00:18::11"

    def second_address(a: Node, b: Node) -> None:
        veth = a.ns.run(["ip", "-o", "-4", "addr", "show", "to", a.outer4]).stdout.split()[1]
        a.ns.run(["ip", "addr", "add", f"{extra}/{24 if family == '4' else 64}", "dev", veth,
                  *([] if family == "4" else ["nodad"])])

    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO, family=family, a_knows_b=False, before_config=second_address)
    target = f"{extra}:{a.port}" if family == "4" else f"[{extra}]:{a.port}"
    b.wg("set", b.iface, "peer", a.public, "endpoint", target)
    b.ns.wait_ping(a.inner4, 20)
    assert b.ns.ping(a.inner6, count=5).returncode == 0
    assert a.ns.ping(b.inner4, count=5).returncode == 0  # wgpyd-originated traffic too
    assert b.wg("show", b.iface, "endpoints").stdout.split()[1] == target
