"""Addresses, routes, policy rules, MTU and link state of the current network namespace, over rtnetlink.

This is what `wg-quick` does with `ip`, done through pyroute2 so that `wgpy up`/`down` never parse `ip`'s
text. Every request is built to leave the kernel in the state the matching `ip` command leaves it in, because
the tests compare the two byte for byte (`ip -j route show table all` after `wgpy up` and after `wg-quick up`):

* `ip route add P dev D [table T]` sends proto ``boot``, type unicast and, for IPv4 without a gateway, scope
  ``link`` (pyroute2's defaults are proto ``static`` and scope ``universe``, so they are given explicitly);
* `ip rule add` without ``pref`` lets the kernel choose the priority (pyroute2 would send 32000), so the
  priority is sent as None, which pyroute2 leaves out of the request;
* `ip route get`, `ip route show default` and `ip route show dev D match P` are answered from the kernel's
  own lookup and dump, with iproute2's filters re-implemented in :func:`_covers`.

All functions work in the namespace of the calling process: `ip netns exec NS wgpy up` therefore changes NS
only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
FR_ACT_TO_TBL = 1
FIB_RULE_INVERT = 0x2
SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"

__all__ = [
    "Interface", "Netlink", "NetlinkError", "Network", "Route", "Rule", "family_of", "netlink", "read_sysctl",
    "write_sysctl",
]


def family_of(network: Network | Interface | ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if network.version == 6 else socket.AF_INET


@dataclass(frozen=True)
class Route:
    """The parts of a route that wg-quick's decisions depend on."""

    family: int
    dst: Network
    table: int
    oif: int | None
    mtu: int | None  # the RTAX_MTU metric, when the route carries one
    type: int = RTN_UNICAST


@dataclass(frozen=True)
class Rule:
    """A policy rule as wg-quick adds them: `[not] fwmark M table T` or `table T suppress_prefixlength N`.

    `priority` None means "let the kernel choose" when adding; rules read back always carry theirs.
    """

    family: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    priority: int | None = None

    def describe(self) -> str:
        """The `ip rule` arguments that add this rule (for wg-quick-style `[#]` lines and messages)."""
        words = ["ip", "-6" if self.family == socket.AF_INET6 else "-4", "rule", "add"]
        if self.invert:
            words.append("not")
        if self.fwmark is not None:
            words += ["fwmark", str(self.fwmark)]
        words += ["table", "main" if self.table == RT_TABLE_MAIN else str(self.table)]
        if self.suppress_prefixlength is not None:
            words += ["suppress_prefixlength", str(self.suppress_prefixlength)]
        return " ".join(words)

    def same_selector(self, other: Rule) -> bool:
        """Equal apart from the priority."""
        return (self.family, self.table, self.fwmark, self.invert, self.suppress_prefixlength) == (
            other.family, other.table, other.fwmark, other.invert, other.suppress_prefixlength)


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def _covers(route_dst: Network, prefix: Network) -> bool:
    """iproute2's `match PREFIX`: the route's prefix is no longer than PREFIX's and contains its address."""
    return route_dst.version == prefix.version and route_dst.prefixlen <= prefix.prefixlen and \
        prefix.network_address in route_dst


class Netlink:
    """One rtnetlink socket (no multicast groups: we only ask and change, never listen)."""

    def __init__(self) -> None:
        self.ipr = IPRoute(groups=0)

    def close(self) -> None:
        self.ipr.close()

    # --- links ---------------------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def link_name(self, index: int) -> str | None:
        try:
            links = self.ipr.get_links(index)
        except NetlinkError:
            return None
        return str(links[0].get_attr("IFLA_IFNAME")) if links else None

    def link_mtu(self, index: int) -> int | None:
        try:
            links = self.ipr.get_links(index)
        except NetlinkError:
            return None
        return int(links[0].get_attr("IFLA_MTU")) if links else None

    def set_mtu_up(self, index: int, mtu: int) -> None:
        """`ip link set mtu MTU up dev D`: one request, as ip sends it."""
        self.ipr.link("set", index=index, mtu=mtu, state="up")

    def delete_link(self, index: int) -> None:
        self.ipr.link("del", index=index)

    # --- addresses -----------------------------------------------------------------------------------------

    def addresses(self, index: int, family: int = socket.AF_UNSPEC) -> list[Interface]:
        """The device's addresses in the kernel's order (IPv4 first), as `ip -brief address show` lists them."""
        result: list[Interface] = []
        for msg in self.ipr.get_addr(family=family, index=index):
            if msg["index"] != index:
                continue
            text = _attr(msg, "IFA_LOCAL") or _attr(msg, "IFA_ADDRESS")
            if text is None:
                continue
            result.append(ipaddress.ip_interface(f"{text.split('%')[0]}/{msg['prefixlen']}"))
        return result

    def add_address(self, index: int, address: Interface) -> None:
        """`ip address add A/P dev D` (IFA_LOCAL and IFA_ADDRESS both A; no broadcast, as ip sends it)."""
        self.ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
                      family=family_of(address))

    # --- routes --------------------------------------------------------------------------------------------

    def _route(self, msg: Any) -> Route:
        family = int(msg["family"])
        dst_text = _attr(msg, "RTA_DST", "::" if family == socket.AF_INET6 else "0.0.0.0")
        mtu = None
        metrics = msg.get_attr("RTA_METRICS")
        if metrics is not None:
            mtu = metrics.get_attr("RTAX_MTU")
        return Route(
            family=family,
            dst=ipaddress.ip_network(f"{dst_text}/{msg['dst_len']}", strict=False),
            table=int(_attr(msg, "RTA_TABLE", msg["table"])),
            oif=_attr(msg, "RTA_OIF"),
            mtu=int(mtu) if mtu else None,
            type=int(msg["type"]),
        )

    def routes(self, family: int, table: int | None = None) -> list[Route]:
        """All routes of `family` (in dump order), optionally of one table only."""
        found = [self._route(m) for m in self.ipr.route("dump", family=family)]
        return [r for r in found if table is None or r.table == table]

    def route_get(self, address: str) -> Route | None:
        """`ip route get ADDRESS`: the route the kernel would use, with its MTU metric if any; None: unroutable."""
        ip = ipaddress.ip_address(address)
        try:
            msgs = self.ipr.route("get", dst=str(ip), family=family_of(ip))
        except NetlinkError:
            return None
        return self._route(msgs[0]) if msgs else None

    def default_route_v4(self) -> Route | None:
        """The first line of `ip route show default`: IPv4, table main, prefix 0.0.0.0/0 exactly."""
        for route in self.routes(socket.AF_INET, RT_TABLE_MAIN):
            if route.dst.prefixlen == 0:
                return route
        return None

    def has_route_covering(self, index: int, prefix: Network) -> bool:
        """`ip route show dev D match PREFIX` is not empty (table main, as ip shows by default)."""
        return any(r.oif == index and _covers(r.dst, prefix)
                   for r in self.routes(family_of(prefix), RT_TABLE_MAIN))

    def table_in_use(self, table: int) -> bool:
        """`ip -4 route show table T` or `ip -6 route show table T` is not empty."""
        return any(self.routes(family, table) for family in (socket.AF_INET, socket.AF_INET6))

    def add_route(self, prefix: Network, index: int, table: int = RT_TABLE_MAIN) -> None:
        """`ip route add PREFIX dev D [table T]`."""
        family = family_of(prefix)
        self.ipr.route(
            "add", family=family, dst=str(prefix.network_address), dst_len=prefix.prefixlen, oif=index,
            table=table, proto=RTPROT_BOOT, type=RTN_UNICAST,
            scope=RT_SCOPE_LINK if family == socket.AF_INET else RT_SCOPE_UNIVERSE,
        )

    def delete_route(self, prefix: Network, index: int, table: int = RT_TABLE_MAIN) -> None:
        family = family_of(prefix)
        self.ipr.route("del", family=family, dst=str(prefix.network_address), dst_len=prefix.prefixlen,
                       oif=index, table=table)

    # --- rules ---------------------------------------------------------------------------------------------

    def rules(self, family: int) -> list[Rule]:
        """The family's rules in priority order, as `ip rule show` lists them."""
        result = []
        for msg in self.ipr.get_rules(family=family):
            fwmark = msg.get_attr("FRA_FWMARK")
            suppress = msg.get_attr("FRA_SUPPRESS_PREFIXLEN")
            result.append(Rule(
                family=family,
                table=int(_attr(msg, "FRA_TABLE", msg["table"])),
                fwmark=None if fwmark is None else int(fwmark),
                invert=bool(msg["flags"] & FIB_RULE_INVERT),
                # The kernel reports -1 (0xffffffff) when the rule has no suppress_prefixlength.
                suppress_prefixlength=None if suppress is None or suppress in (-1, 0xFFFFFFFF) else int(suppress),
                priority=int(_attr(msg, "FRA_PRIORITY", 0)),
            ))
        return result

    def add_rule(self, rule: Rule) -> Rule:
        """`ip rule add ...`; returns the rule with the priority the kernel gave it."""
        before = {r for r in self.rules(rule.family) if r.same_selector(rule)}
        kwargs: dict[str, Any] = {"family": rule.family, "table": rule.table, "action": FR_ACT_TO_TBL,
                                  "priority": rule.priority}
        if rule.invert:
            kwargs["flags"] = FIB_RULE_INVERT
        if rule.fwmark is not None:
            kwargs["fwmark"] = rule.fwmark
        if rule.suppress_prefixlength is not None:
            kwargs["suppress_prefixlen"] = rule.suppress_prefixlength
        self.ipr.rule("add", **kwargs)
        added = [r for r in self.rules(rule.family) if r.same_selector(rule) and r not in before]
        return added[0] if added else rule

    def delete_rule(self, rule: Rule) -> None:
        """Delete exactly this rule (its priority included when known, as `ip rule del pref P ...`)."""
        kwargs: dict[str, Any] = {"family": rule.family, "table": rule.table, "action": FR_ACT_TO_TBL,
                                  "priority": rule.priority}
        if rule.invert:
            kwargs["flags"] = FIB_RULE_INVERT
        if rule.fwmark is not None:
            kwargs["fwmark"] = rule.fwmark
        if rule.suppress_prefixlength is not None:
            kwargs["suppress_prefixlen"] = rule.suppress_prefixlength
        self.ipr.rule("del", **kwargs)


@contextmanager
def netlink() -> Iterator[Netlink]:
    nl = Netlink()
    try:
        yield nl
    finally:
        nl.close()


def read_sysctl(path: str) -> str | None:
    """A sysctl's value; net.* sysctls are those of the calling process's network namespace."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value + "\n")
