"""Provisioned peers really work: wireguard-go servers and clients in namespaces, configured by `wgpy peer`.

Every client configuration here is the one `wgpy peer add` wrote, brought up with wg-quick (wireguard-go as the
userspace implementation). DNS is left out of the clients (``--no-dns``): resolvconf would edit the host's
resolver, which a test must never touch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Lab, Namespace, lab
from wgpy import config as wgconfig
from wgpy import keys
from wgpy.ops.cli import COMMANDS
from wgpy.ops.provision import safe_filename
from wgpy.uapi import client as uapi

pytestmark = pytest.mark.netns

DAEMONS = ("wireguard-go", "wgpyd")


@pytest.fixture(params=DAEMONS)
def daemon(request: pytest.FixtureRequest) -> str:
    """The userspace implementation wg-quick starts for every interface of the test."""
    return str(request.param)


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        try:
            yield the_lab
        finally:
            # `wgpy up` records what it did per interface; the namespaces go away, so do our records.
            for name in the_lab.interfaces:
                Path(f"/var/run/wgpy/{name}.json").unlink(missing_ok=True)


def write_server(path: Path, address4: str, address6: str | None, port: int) -> None:
    addresses = address4 + (f", {address6}" if address6 else "")
    path.write_text(
        "[Interface]\n"
        f"Address = {addresses}\n"
        f"ListenPort = {port}\n"
        f"PrivateKey = {keys.to_base64(keys.generate_private_key())}\n"
    )


def up(ns: Namespace, conf: Path, daemon: str = "wireguard-go", tool: str = "wg-quick") -> None:
    """Bring `conf` up with Debian's wg-quick or with `wgpy up` (tool="wgpy")."""
    command = ["wg-quick", "up", str(conf)] if tool == "wg-quick" else ["wgpy", "up", str(conf)]
    ns.run(command, env={"WG_QUICK_USERSPACE_IMPLEMENTATION": daemon})


def peer(*args: str) -> None:
    assert COMMANDS["peer"](list(args)) == 0, args


def client_conf(tmp_path: Path, server_iface: str, name: str, client_iface: str) -> Path:
    """The issued client configuration, copied to a file named after the client's interface (wg-quick's rule)."""
    issued = tmp_path / f"{server_iface}.clients" / f"{safe_filename(name)}.conf"
    dest = tmp_path / "clients" / f"{client_iface}.conf"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(issued.read_text())
    os.chmod(dest, 0o600)
    return dest


def test_road_warrior_reaches_server_and_lan_behind_it(netlab: Lab, tmp_path: Path, daemon: str) -> None:
    server, client, lan, other = netlab.namespace(), netlab.namespace(), netlab.namespace(), netlab.namespace()
    netlab.veth(server, ["198.18.61.1/24"], client, ["198.18.61.2/24"])
    netlab.veth(server, ["198.18.62.1/24"], other, ["198.18.62.2/24"])
    netlab.veth(server, ["10.50.0.1/24"], lan, ["10.50.0.2/24"])
    server.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    lan.run(["ip", "route", "add", "10.61.0.0/24", "via", "10.50.0.1"])

    siface = netlab.interface()
    conf = tmp_path / f"{siface}.conf"
    write_server(conf, "10.61.0.1/24", "fd00:61::1/64", 51861)
    up(server, conf, daemon)

    # A first peer, added while the interface runs, gets a session going.
    peer("add", siface, "first", "--config", str(conf), "--endpoint", "198.18.62.1:51861", "--no-dns",
         "--no-qr")
    c1 = netlab.interface()
    up(other, client_conf(tmp_path, siface, "first", c1), daemon)
    other.wait_ping("10.61.0.1")
    first_key = wgconfig.load(str(conf)).peers[0].public_key
    before = {p.public_key: p for p in uapi.get(siface).peers}[first_key]
    assert before.last_handshake[0] > 0 and before.rx_bytes > 0

    # The road warrior, added live: the first peer keeps its session and counters.
    peer("add", siface, "phone", "--config", str(conf), "--endpoint", "198.18.61.1:51861", "--no-dns",
         "--no-qr")
    after = {p.public_key: p for p in uapi.get(siface).peers}
    assert after[first_key].last_handshake == before.last_handshake
    assert after[first_key].rx_bytes >= before.rx_bytes and after[first_key].tx_bytes >= before.tx_bytes
    assert after[first_key].endpoint == before.endpoint
    cfg = wgconfig.load(str(conf))
    phone = cfg.peers[1]
    assert phone.friendly_name == "phone"
    assert [str(n) for n in after[phone.public_key].allowed_ips] == ["10.61.0.3/32", "fd00:61::3/128"]

    c2 = netlab.interface()
    up(client, client_conf(tmp_path, siface, "phone", c2), daemon)
    client.wait_ping("10.61.0.1")
    assert client.ping("10.61.0.1").returncode == 0
    assert client.ping("fd00:61::1").returncode == 0
    # Through the server to the LAN namespace behind it.
    assert client.ping("10.50.0.2").returncode == 0
    # Road warrior: everything goes into the tunnel, including the underlay's other hosts.
    assert "dev " + c2 in client.run(["ip", "route", "get", "10.99.99.99", "mark", "0"]).stdout
    other.wait_ping("10.61.0.1")

    # Removing the phone takes it off the running interface; the first peer stays.
    peer("remove", siface, "phone", "--config", str(conf))
    live = [p.public_key for p in uapi.get(siface).peers]
    assert live == [first_key]
    assert client.ping("10.61.0.1", count=2).returncode != 0


def test_hub_and_spoke_spokes_reach_each_other(netlab: Lab, tmp_path: Path, daemon: str) -> None:
    hub = netlab.namespace()
    spokes = [netlab.namespace() for _ in range(2)]
    for n, spoke in enumerate(spokes):
        netlab.veth(hub, [f"198.18.{70 + n}.1/24"], spoke, [f"198.18.{70 + n}.2/24"])
    hiface = netlab.interface()
    conf = tmp_path / f"{hiface}.conf"
    write_server(conf, "10.70.0.1/24", None, 51870)
    for n in range(2):
        peer("add", hiface, f"spoke{n}", "--config", str(conf), "--layout", "hub-and-spoke",
             "--endpoint", f"198.18.{70 + n}.1:51870", "--no-qr")
    assert "ip_forward=1" in conf.read_text()
    up(hub, conf, daemon)  # the PostUp hint turns forwarding on inside the hub's namespace
    assert hub.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    for n, spoke in enumerate(spokes):
        up(spoke, client_conf(tmp_path, hiface, f"spoke{n}", netlab.interface()), daemon)
        spoke.wait_ping("10.70.0.1")
    spokes[0].wait_ping("10.70.0.3")
    assert spokes[0].ping("10.70.0.3").returncode == 0
    assert spokes[1].ping("10.70.0.2").returncode == 0


def test_site_to_site_subnets_reach_each_other(netlab: Lab, tmp_path: Path, daemon: str) -> None:
    gw_a, gw_b, lan_a, lan_b = (netlab.namespace() for _ in range(4))
    netlab.veth(gw_a, ["198.18.80.1/24"], gw_b, ["198.18.80.2/24"])
    netlab.veth(gw_a, ["10.10.0.1/24"], lan_a, ["10.10.0.2/24"])
    netlab.veth(gw_b, ["10.20.0.1/24"], lan_b, ["10.20.0.2/24"])
    for gw in (gw_a, gw_b):
        gw.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    lan_a.run(["ip", "route", "add", "default", "via", "10.10.0.1"])
    lan_b.run(["ip", "route", "add", "default", "via", "10.20.0.1"])
    aiface = netlab.interface()
    conf = tmp_path / f"{aiface}.conf"
    write_server(conf, "10.80.0.1/24", None, 51880)
    peer("add", aiface, "branch", "--config", str(conf), "--layout", "site-to-site", "--routes", "10.20.0.0/24",
         "--server-routes", "10.10.0.0/24", "--endpoint", "198.18.80.1:51880", "--no-qr")
    cfg = wgconfig.load(str(conf))
    assert [str(n) for n in cfg.peers[0].allowed_ips] == ["10.80.0.2/32", "10.20.0.0/24"]
    up(gw_a, conf, daemon)
    up(gw_b, client_conf(tmp_path, aiface, "branch", netlab.interface()), daemon)
    lan_b.wait_ping("10.10.0.2")
    assert lan_b.ping("10.10.0.2").returncode == 0
    assert lan_a.ping("10.20.0.2").returncode == 0


def test_road_warrior_with_wgpy_up(netlab: Lab, tmp_path: Path) -> None:
    """The same provisioning, with both ends brought up by `wgpy up` (wgpyd) instead of wg-quick."""
    server, client = netlab.namespace(), netlab.namespace()
    netlab.veth(server, ["198.18.63.1/24"], client, ["198.18.63.2/24"])
    siface = netlab.interface()
    conf = tmp_path / f"{siface}.conf"
    write_server(conf, "10.63.0.1/24", "fd00:63::1/64", 51863)
    up(server, conf, "wgpyd", tool="wgpy")
    peer("add", siface, "laptop", "--config", str(conf), "--endpoint", "198.18.63.1:51863", "--no-dns", "--no-qr")
    up(client, client_conf(tmp_path, siface, "laptop", netlab.interface()), "wgpyd", tool="wgpy")
    client.wait_ping("10.63.0.1")
    assert client.ping("fd00:63::1").returncode == 0
