"""Address allocation: the lowest free host address, never the server's, never inside a peer's prefix."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.ops.addresses import AddressesExhausted, allocate, next_free, usable_range


def test_basic_v4_v6() -> None:
    server = [ipaddress.ip_interface("10.0.0.1/24"), ipaddress.ip_interface("fd00::1/64")]
    taken = ["10.0.0.2/32", "fd00::2/128", "10.0.0.8/29", "0.0.0.0/0", "10.20.0.0/24"]
    assert [str(a) for a in allocate(server, taken)] == ["10.0.0.3/32", "fd00::3/128"]
    taken = ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/30"]
    assert str(next_free(ipaddress.ip_network("10.0.0.0/24"), taken)) == "10.0.0.8"


def test_exhausted_and_small_subnets() -> None:
    with pytest.raises(AddressesExhausted):
        next_free(ipaddress.ip_network("10.0.0.0/30"), ["10.0.0.1", "10.0.0.2"])
    assert str(next_free(ipaddress.ip_network("10.0.0.0/31"), ["10.0.0.0"])) == "10.0.0.1"
    assert str(next_free(ipaddress.ip_network("fd00::/127"), [])) == "fd00::"


v4_prefix = st.integers(min_value=24, max_value=30)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[ipaddress.IPv4Network, list[ipaddress.IPv4Network]]:
    plen = draw(v4_prefix)
    base = draw(st.integers(min_value=0, max_value=0xFFFF)) << 8
    subnet = ipaddress.ip_network(f"{ipaddress.ip_address(0x0A000000 | base)}/{plen}", strict=False)
    taken = []
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        host = draw(st.integers(min_value=0, max_value=subnet.num_addresses - 1))
        tplen = draw(st.integers(min_value=plen - 2, max_value=32))
        taken.append(ipaddress.ip_network(f"{subnet.network_address + host}/{tplen}", strict=False))
    return subnet, taken


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_lowest_free_matches_brute_force(
    case: tuple[ipaddress.IPv4Network, list[ipaddress.IPv4Network]],
) -> None:
    subnet, taken = case
    first, last = usable_range(subnet)
    contained = [t for t in taken if t.subnet_of(subnet)]
    expected = None
    for n in range(first, last + 1):
        addr = ipaddress.ip_address(n)
        if not any(addr in t for t in contained):
            expected = addr
            break
    if expected is None:
        with pytest.raises(AddressesExhausted):
            next_free(subnet, taken)
    else:
        got = next_free(subnet, taken)
        assert got == expected
        assert got != subnet.network_address and got != subnet.broadcast_address


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=1, max_value=60), st.integers(min_value=64, max_value=120))
def test_repeated_allocation_is_unique(count: int, v6len: int) -> None:
    server = [ipaddress.ip_interface("10.1.2.1/24"), ipaddress.ip_interface(f"fd00:1::1/{v6len}")]
    peers: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for _ in range(count):
        new = allocate(server, peers)
        assert len(new) == 2
        for a in new:
            assert a not in peers and a.ip not in {s.ip for s in server}
            assert a.ip in (server[0].network if a.version == 4 else server[1].network)
        peers.extend(new)
