"""Address allocation for new peers: the lowest free host address in each of the server's subnets.

A server's ``Address = 10.0.0.1/24, fd00::1/64`` names the tunnel subnets. An address is taken when it is the
server's own, or lies inside any peer's AllowedIPs prefix that is contained in the subnet (a peer with
``10.0.0.8/29`` takes all eight). Prefixes wider than the subnet (``0.0.0.0/0`` on a peer that is itself a
gateway, or a ``10.0.0.0/8`` site route) do not take anything: cryptokey routing is longest-prefix, so a new
``/32`` still belongs to the new peer. The IPv4 network and broadcast addresses and the IPv6 subnet-router
anycast address (the all-zero host) are never handed out.

The scan walks sorted taken intervals rather than host addresses, so a /64 costs as much as a /30.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network
Taken = IPNetwork | IPInterface | IPAddress | str


class AddressesExhausted(Exception):
    """No free address is left in a subnet."""


def _as_network(item: Taken) -> IPNetwork:
    if isinstance(item, str):
        return ipaddress.ip_network(item, strict=False)
    if isinstance(item, IPv4Interface | IPv6Interface):
        return ipaddress.ip_network(item.ip)
    if isinstance(item, IPv4Address | IPv6Address):
        return ipaddress.ip_network(item)
    return item


def usable_range(subnet: IPNetwork) -> tuple[int, int]:
    """First and last host address (as integers) that may be handed out in `subnet`."""
    first, last = int(subnet.network_address), int(subnet.broadcast_address)
    if subnet.version == 4:
        if subnet.prefixlen <= 30:
            first, last = first + 1, last - 1
    elif subnet.prefixlen <= 126:
        first += 1
    return first, last


def next_free(subnet: IPNetwork | IPInterface, taken: Iterable[Taken]) -> IPAddress:
    """The lowest usable address of `subnet` outside every taken prefix contained in it."""
    net = subnet.network if isinstance(subnet, IPv4Interface | IPv6Interface) else subnet
    first, last = usable_range(net)
    intervals: list[tuple[int, int]] = []
    for item in taken:
        t = _as_network(item)
        if t.version != net.version or not t.subnet_of(net):  # type: ignore[arg-type]
            continue
        intervals.append((int(t.network_address), int(t.broadcast_address)))
    intervals.sort()
    candidate = first
    for start, end in intervals:
        if candidate > last:
            break
        if start > candidate:
            break
        candidate = max(candidate, end + 1)
    if candidate > last:
        raise AddressesExhausted(f"no free address left in {net}")
    return ipaddress.ip_address(candidate)


def allocate(
    server_addresses: Sequence[IPInterface], taken: Iterable[Taken]
) -> list[IPInterface]:
    """One host address (/32 or /128) per server subnet, skipping the server's own addresses and `taken`.

    Several server addresses in the same subnet yield one allocation for that subnet.
    """
    taken_list: list[Taken] = list(taken)
    taken_list.extend(server_addresses)
    result: list[IPInterface] = []
    seen: set[IPNetwork] = set()
    for server in server_addresses:
        if server.network in seen:
            continue
        seen.add(server.network)
        address = next_free(server.network, taken_list)
        result.append(ipaddress.ip_interface(f"{address}/{address.max_prefixlen}"))
    return result
