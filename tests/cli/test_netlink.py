"""wgpy.netlink against iproute2: the same changes made with `ip` in one namespace and through pyroute2 in
another must leave the kernel in the same state, and the lookups must answer what `ip` shows.

The code under test runs inside the namespace (`ip netns exec NS python3 -c ...`): rtnetlink acts on the
namespace of the calling process, and the test process itself never leaves the root namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Lab, Namespace, lab


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def in_ns(ns: Namespace, body: str) -> Any:
    """Run `body` (which sets `result`) in the namespace with a Netlink `nl` open; return `result` as JSON."""
    code = ("import ipaddress, json, socket\nfrom wgpy import netlink\nfrom wgpy.netlink import Rule\n"
            "nl = netlink.Netlink()\nresult = None\n" + textwrap.dedent(body)
            + "\nnl.close()\nprint(json.dumps(result, default=str))\n")
    out = ns.run([sys.executable, "-c", code]).stdout
    return json.loads(out.strip().splitlines()[-1])


def pair(lab: Lab) -> tuple[Namespace, str]:
    """A namespace with a veth (named by the lab) whose peer end is in a second namespace."""
    ns, other = lab.namespace(), lab.namespace()
    ifname, _ = lab.veth(ns, ["198.18.0.1/24"], other, ["198.18.0.2/24"])
    return ns, ifname


def state(ns: Namespace, ifname: str) -> dict[str, Any]:
    def j(args: list[str]) -> Any:
        out = ns.run(["ip", "-j", *args]).stdout
        return json.loads(out) if out.strip() else []

    def mask(text: str) -> str:
        return text.replace(f'"{ifname}"', '"DEV"')

    addrs = [{k: a.get(k) for k in ("family", "local", "prefixlen", "scope", "broadcast", "address")}
             for link in j(["address", "show", "dev", ifname]) for a in link["addr_info"]
             if not str(a.get("local", "")).startswith("fe80:")]
    routes = sorted(mask(json.dumps(r, sort_keys=True)) for fam in ("-4", "-6")
                    for r in j([fam, "-d", "route", "show", "table", "all"]) if not str(r["dst"]).startswith("fe80:"))
    rules = [j([fam, "rule", "show"]) for fam in ("-4", "-6")]
    link = j(["link", "show", "dev", ifname])[0]
    return {"addresses": addrs, "routes": routes, "rules": rules, "mtu": link["mtu"], "up": "UP" in link["flags"]}


@pytest.mark.netns
def test_changes_match_iproute2(netlab: Lab) -> None:
    ours, our_dev = pair(netlab)
    theirs, their_dev = pair(netlab)
    in_ns(ours, f"""
        i = nl.link_index({our_dev!r})
        nl.add_address(i, ipaddress.ip_interface("10.0.0.1/24"))
        nl.add_address(i, ipaddress.ip_interface("10.0.0.5/32"))
        nl.add_address(i, ipaddress.ip_interface("fd00::1/64"))
        nl.set_mtu_up(i, 1420)
        nl.add_route(ipaddress.ip_network("10.9.0.0/16"), i)
        nl.add_route(ipaddress.ip_network("10.8.0.0/16"), i, 1234)
        nl.add_route(ipaddress.ip_network("0.0.0.0/0"), i, 51820)
        nl.add_route(ipaddress.ip_network("fd00:9::/48"), i)
        nl.add_route(ipaddress.ip_network("::/0"), i, 51820)
        result = [
            nl.add_rule(Rule(socket.AF_INET, 51820, fwmark=51820, invert=True)).priority,
            nl.add_rule(Rule(socket.AF_INET, 254, suppress_prefixlength=0)).priority,
            nl.add_rule(Rule(socket.AF_INET6, 51820, fwmark=51820, invert=True)).priority,
            nl.add_rule(Rule(socket.AF_INET6, 254, suppress_prefixlength=0)).priority,
        ]
    """)
    script = f"""
        ip -4 address add 10.0.0.1/24 dev {their_dev}
        ip -4 address add 10.0.0.5/32 dev {their_dev}
        ip -6 address add fd00::1/64 dev {their_dev}
        ip link set mtu 1420 up dev {their_dev}
        ip -4 route add 10.9.0.0/16 dev {their_dev}
        ip -4 route add 10.8.0.0/16 dev {their_dev} table 1234
        ip -4 route add 0.0.0.0/0 dev {their_dev} table 51820
        ip -6 route add fd00:9::/48 dev {their_dev}
        ip -6 route add ::/0 dev {their_dev} table 51820
        ip -4 rule add not fwmark 51820 table 51820
        ip -4 rule add table main suppress_prefixlength 0
        ip -6 rule add not fwmark 51820 table 51820
        ip -6 rule add table main suppress_prefixlength 0
    """
    theirs.sh("set -e\n" + textwrap.dedent(script))
    a, b = state(ours, our_dev), state(theirs, their_dev)
    for key in a:
        assert a[key] == b[key], key
    assert a["mtu"] == 1420 and a["up"]


@pytest.mark.netns
def test_lookups_answer_like_iproute2(netlab: Lab) -> None:
    ns, dev = pair(netlab)
    ns.sh(f"""set -e
        ip address add 10.0.0.1/24 dev {dev}
        ip route add 10.7.0.0/16 dev {dev} mtu 1300
        ip route add 10.6.0.0/16 dev {dev} table 51820
        ip link set {dev} mtu 1450
    """)
    result = in_ns(ns, f"""
        i = nl.link_index({dev!r})
        covering = {{p: nl.has_route_covering(i, ipaddress.ip_network(p))
                     for p in ("10.0.0.2/32", "10.0.0.0/24", "10.0.0.0/23", "10.7.1.0/24", "10.6.0.0/16",
                               "10.5.0.1/32")}}
        get = nl.route_get("10.7.3.4")
        near = nl.route_get("10.0.0.9")
        result = {{
            "index": i, "missing": nl.link_index("nosuchlink0"), "mtu": nl.link_mtu(i),
            "covering": covering, "get_mtu": get.mtu, "get_oif": get.oif, "near_mtu": near.mtu,
            "unroutable": nl.route_get("192.0.2.1"), "default": nl.default_route_v4(),
            "table_51820": nl.table_in_use(51820), "table_51821": nl.table_in_use(51821),
            "addresses": [str(a) for a in nl.addresses(i, socket.AF_INET)],
        }}
    """)
    assert result["index"] > 0 and result["missing"] is None and result["mtu"] == 1450
    for prefix, covered in result["covering"].items():
        shown = ns.run(["ip", "route", "show", "dev", dev, "match", prefix]).stdout.strip() != ""
        assert covered == shown, prefix
    assert result["covering"]["10.0.0.2/32"] and not result["covering"]["10.6.0.0/16"]
    assert result["get_mtu"] == 1300 and result["get_oif"] == result["index"] and result["near_mtu"] is None
    assert result["unroutable"] is None and result["default"] is None
    assert result["table_51820"] and not result["table_51821"]
    assert result["addresses"] == ["198.18.0.1/24", "10.0.0.1/24"]

    ns.run(["ip", "route", "add", "default", "via", "198.18.0.2", "mtu", "1280"])
    default = in_ns(ns, "r = nl.default_route_v4()\nresult = [r.oif, r.mtu, str(r.dst)]")
    assert default == [result["index"], 1280, "0.0.0.0/0"]


@pytest.mark.netns
def test_delete_rule_deletes_exactly_that_rule(netlab: Lab) -> None:
    ns, _dev = pair(netlab)
    ns.sh("ip rule add table main suppress_prefixlength 0 pref 100; ip rule add table main suppress_prefixlength 0 "
          "pref 200; ip rule add not fwmark 7 table 7 pref 300")
    result = in_ns(ns, """
        nl.delete_rule(Rule(socket.AF_INET, 254, suppress_prefixlength=0, priority=200))
        nl.delete_rule(Rule(socket.AF_INET, 7, fwmark=7, invert=True, priority=300))
        result = [[r.priority, r.table, r.suppress_prefixlength, r.fwmark] for r in nl.rules(socket.AF_INET)]
    """)
    assert result == [[0, 255, None, None], [100, 254, 0, None], [32766, 254, None, None], [32767, 253, None, None]]


@pytest.mark.netns
def test_sysctl_is_per_namespace(netlab: Lab) -> None:
    ns, _dev = pair(netlab)
    root_before = Path("/proc/sys/net/ipv4/conf/all/src_valid_mark").read_text()
    result = in_ns(ns, """
        before = netlink.read_sysctl(netlink.SRC_VALID_MARK)
        netlink.write_sysctl(netlink.SRC_VALID_MARK, "1")
        result = [before, netlink.read_sysctl(netlink.SRC_VALID_MARK)]
    """)
    assert result == ["0", "1"]
    assert Path("/proc/sys/net/ipv4/conf/all/src_valid_mark").read_text() == root_before
    assert subprocess.run(["ip", "netns", "exec", ns.name, "cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark"],
                          capture_output=True, text=True).stdout == "1\n"
