"""``WG_QUICK_USERSPACE_IMPLEMENTATION=wgpyd wg-quick up/down``: addresses, MTU, hooks, a peer, and a full tunnel
(AllowedIPs 0.0.0.0/0, ::/0) whose fwmark keeps the encrypted packets out of the tunnel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_daemon_lab import (
    WGPYD,
    WIREGUARD_GO,
    Node,
    assert_clean,
    interface_block,
    peer_block,
)
from tests.netns import Lab, Namespace, lab

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def wg_quick(ns: Namespace, action: str, conf: Path) -> None:
    ns.run(["wg-quick", action, str(conf)], env={"WG_QUICK_USERSPACE_IMPLEMENTATION": WGPYD}, timeout=60)


def setup(lab: Lab, tmp_path: Path, allowed: str, extra: str = "") -> tuple[Node, Node, Path]:
    ns_a, ns_b = lab.namespace(), lab.namespace()
    lab.veth(ns_a, ["198.18.0.1/24", "fd00:18::1/64"], ns_b, ["198.18.0.2/24", "fd00:18::2/64"])
    a = Node(ns_a, lab.interface(), WGPYD, "198.18.0.1", "fd00:18::1", "10.0.0.1", "fd00:a::1")
    b = Node(ns_b, lab.interface(), WIREGUARD_GO, "198.18.0.2", "fd00:18::2", "10.0.0.2", "fd00:a::2")
    b.start()
    b.setconf(interface_block(b) + peer_block(a, f"{a.inner4}/32,{a.inner6}/128"))
    conf = tmp_path / f"{a.iface}.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {a.private}\nAddress = {a.inner4}/24, {a.inner6}/64\nMTU = 1380\n"
        f"PostUp = touch {tmp_path}/post-up-%i\nPostDown = touch {tmp_path}/post-down-%i\n{extra}\n"
        f"[Peer]\nPublicKey = {b.public}\nAllowedIPs = {allowed}\nEndpoint = {b.outer4}:{b.port}\n"
    )
    conf.chmod(0o600)
    return a, b, conf


def test_wg_quick_up_down(netlab: Lab, tmp_path: Path) -> None:
    a, b, conf = setup(netlab, tmp_path, "10.0.0.2/32, fd00:a::2/128")
    wg_quick(a.ns, "up", conf)
    assert (tmp_path / f"post-up-{a.iface}").exists()
    assert a.ns.run(["cat", f"/sys/class/net/{a.iface}/mtu"]).stdout.strip() == "1380"
    addrs = a.ns.run(["ip", "addr", "show", "dev", a.iface]).stdout
    assert f"{a.inner4}/24" in addrs and f"{a.inner6}/64" in addrs
    a.ns.wait_ping(b.inner4, 20)
    assert a.ns.ping(b.inner6).returncode == 0
    assert len(a.pids()) == 1
    wg_quick(a.ns, "down", conf)
    assert (tmp_path / f"post-down-{a.iface}").exists()
    assert_clean(a)


def test_full_tunnel_with_fwmark(netlab: Lab, tmp_path: Path) -> None:
    a, b, conf = setup(netlab, tmp_path, "0.0.0.0/0, ::/0")
    # An address beyond the peer, reachable only through the tunnel: proves that everything goes through it.
    b.ns.run(["ip", "addr", "add", "10.99.99.99/32", "dev", "lo"])
    b.setconf(interface_block(b) + peer_block(a, f"{a.inner4}/32,{a.inner6}/128"))
    rules_before = a.ns.run(["ip", "rule"]).stdout
    wg_quick(a.ns, "up", conf)
    assert a.wg("show", a.iface, "fwmark").stdout.strip() == "0xca6c"
    a.ns.wait_ping(b.inner4, 20)
    assert a.ns.ping("10.99.99.99").returncode == 0
    assert a.ns.ping(b.inner6).returncode == 0
    # The encrypted packets themselves went to the peer's outer address over the veth (no loop), and the route to
    # an arbitrary address is the tunnel.
    route = a.ns.run(["ip", "route", "get", "203.0.113.5"]).stdout
    assert f"dev {a.iface}" in route
    marked = a.ns.run(["ip", "route", "get", b.outer4, "mark", "0xca6c"]).stdout
    assert f"dev {a.iface}" not in marked
    wg_quick(a.ns, "down", conf)
    assert_clean(a)
    assert a.ns.run(["ip", "rule"]).stdout == rules_before
