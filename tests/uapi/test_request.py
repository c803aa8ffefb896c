"""Request parsing: every key, every refused value with the errno Debian's wireguard-go gives for it."""

from __future__ import annotations

import ipaddress

import pytest

from wgpy.uapi.request import (
    EINVAL,
    EPROTO,
    AddAllowedIP,
    GetRequest,
    PeerSection,
    RemovePeer,
    ReplaceAllowedIPs,
    ReplacePeers,
    SetEndpoint,
    SetFwmark,
    SetListenPort,
    SetPersistentKeepalive,
    SetPresharedKey,
    SetPrivateKey,
    SetRequest,
    StatsRequest,
    UapiError,
    UpdateOnly,
    parse_endpoint,
    parse_network,
    parse_request,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
K1C = bytes([0, *range(1, 31), 0x5F])  # K1 clamped


def parse_set(*lines: str) -> SetRequest:
    request = parse_request("set=1", list(lines))
    assert isinstance(request, SetRequest)
    return request


def test_every_key_in_order() -> None:
    request = parse_set(
        f"private_key={K1C.hex()}", "listen_port=51820", "fwmark=4294967295", "replace_peers=true",
        f"public_key={K2.hex().upper()}", "update_only=true", f"preshared_key={K1.hex()}",
        "endpoint=[fd00::1%eth0]:0", "persistent_keepalive_interval=65535", "replace_allowed_ips=true",
        "allowed_ip=10.1.2.3/8", "allowed_ip=fd00::1/064", "protocol_version=1",
        f"public_key={K1.hex()}", "remove=true",
    )
    assert request.device == (SetPrivateKey(K1C), SetListenPort(51820), SetFwmark(0xFFFFFFFF), ReplacePeers())
    assert request.peers == (
        PeerSection(K2, (
            UpdateOnly(), SetPresharedKey(K1), SetEndpoint(("fd00::1", 0)), SetPersistentKeepalive(65535),
            ReplaceAllowedIPs(), AddAllowedIP(ipaddress.ip_network("10.0.0.0/8")),
            AddAllowedIP(ipaddress.ip_network("fd00::/64")),
        )),
        PeerSection(K1, (RemovePeer(),)),
    )
    assert request.peers[0].update_only and not request.peers[1].update_only


def test_private_key_clamped_as_wireguard_go_stores_it() -> None:
    request = parse_set("private_key=" + "aa" * 32)
    assert request.device == (SetPrivateKey(bytes.fromhex("a8" + "aa" * 30 + "6a")),)


def test_zero_keys_clear() -> None:
    request = parse_set("private_key=" + "0" * 64, f"public_key={K1.hex()}", "preshared_key=" + "0" * 64)
    assert request.device == (SetPrivateKey(None),)
    assert request.peers[0].ops == (SetPresharedKey(None),)


def test_empty_set_and_peer_without_keys() -> None:
    assert parse_set() == SetRequest((), ())
    assert parse_set(f"public_key={K1.hex()}").peers == (PeerSection(K1, ()),)


def test_get_and_stats() -> None:
    assert parse_request("get=1", []) == GetRequest()
    assert parse_request("wgpy_stats=1", []) == StatsRequest()
    with pytest.raises(UapiError) as info:
        parse_request("get=1", ["foo=bar"])
    assert info.value.code == EINVAL
    with pytest.raises(KeyError):
        parse_request("get=2", [])


def test_keys_are_redacted_in_repr() -> None:
    request = parse_set(f"private_key={K1.hex()}", f"public_key={K2.hex()}", f"preshared_key={K1.hex()}")
    assert K1.hex() not in repr(request) and "redacted" in repr(request)


PEER = f"public_key={K1.hex()}"

# (lines, errno): each measured against wireguard-go 0.0.20220316.
BAD = [
    (["foo=bar"], EINVAL),
    (["noequals"], EPROTO),
    ([PEER, "noequals"], EPROTO),
    (["private_key=zz"], EINVAL),
    (["private_key=" + "a" * 63], EINVAL),
    (["private_key=" + "a" * 66], EINVAL),
    (["private_key="], EINVAL),
    (["private_key=" + "g" * 64], EINVAL),
    (["listen_port=abc"], EINVAL),
    (["listen_port=70000"], EINVAL),
    (["listen_port=65536"], EINVAL),
    (["listen_port=-1"], EINVAL),
    (["listen_port=+5"], EINVAL),
    (["listen_port="], EINVAL),
    (["listen_port=٣"], EINVAL),  # a non-ASCII digit
    (["fwmark=abc"], EINVAL),
    (["fwmark=0x10"], EINVAL),
    (["fwmark=4294967296"], EINVAL),
    (["replace_peers=false"], EINVAL),
    (["replace_peers=yes"], EINVAL),
    (["allowed_ip=10.0.0.1/32"], EINVAL),  # a peer key before any public_key
    (["protocol_version=1"], EINVAL),
    (["public_key="], EINVAL),
    (["public_key=zz"], EINVAL),
    ([PEER, "private_key=" + "a" * 64], EINVAL),  # device keys are not allowed in a peer section
    ([PEER, "listen_port=1"], EINVAL),
    ([PEER, "endpoint=bad"], EINVAL),
    ([PEER, "endpoint=1.2.3.4"], EINVAL),
    ([PEER, "endpoint=[::1]:99999"], EINVAL),
    ([PEER, "endpoint=::1:5"], EINVAL),
    ([PEER, "endpoint=host.example:5"], EINVAL),
    ([PEER, "endpoint=01.2.3.4:5"], EINVAL),
    ([PEER, "endpoint=1.2.3.4:-5"], EINVAL),
    ([PEER, "endpoint=[1.2.3.4]:5"], EINVAL),
    ([PEER, "endpoint=[::1:5"], EINVAL),
    ([PEER, "endpoint=:5"], EINVAL),
    ([PEER, "allowed_ip=10.0.0.1/33"], EINVAL),
    ([PEER, "allowed_ip=fd00::/129"], EINVAL),
    ([PEER, "allowed_ip=10.0.0.1"], EINVAL),
    ([PEER, "allowed_ip=10.0.0.256/8"], EINVAL),
    ([PEER, "allowed_ip=10.0.0.1/-1"], EINVAL),
    ([PEER, "allowed_ip=/8"], EINVAL),
    ([PEER, "protocol_version=2"], EINVAL),
    ([PEER, "persistent_keepalive_interval=70000"], EINVAL),
    ([PEER, "persistent_keepalive_interval=-1"], EINVAL),
    ([PEER, "remove=maybe"], EINVAL),
    ([PEER, "remove=false"], EINVAL),
    ([PEER, "update_only=maybe"], EINVAL),
    ([PEER, "replace_allowed_ips=maybe"], EINVAL),
    ([PEER, "preshared_key=zz"], EINVAL),
    ([PEER, "preshared_key="], EINVAL),
    ([PEER, "foo=bar"], EINVAL),
    ([PEER, "endpoint=1.2.3.4:5", "allowed_ip=10.9.0.0/16", "foo=bar"], EINVAL),
]


@pytest.mark.parametrize(("lines", "code"), BAD)
def test_refused(lines: list[str], code: int) -> None:
    with pytest.raises(UapiError) as info:
        parse_request("set=1", lines)
    assert info.value.code == code


def test_error_messages_never_hold_a_key() -> None:
    secret = "f" * 63 + "x"
    with pytest.raises(UapiError) as info:
        parse_request("set=1", [f"private_key={secret}"])
    assert secret not in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("1.2.3.4:5", ("1.2.3.4", 5)),
    ("1.2.3.4:0", ("1.2.3.4", 0)),
    ("1.2.3.4:065535", ("1.2.3.4", 65535)),
    ("[::1]:51820", ("::1", 51820)),
    ("[FD00:0:0::1]:1", ("fd00::1", 1)),
    ("[fe80::1%lo]:5", ("fe80::1", 5)),
])
def test_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1/032", "10.0.0.1/32"),
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("::/0", "::/0"),
    ("FD00::1:2/112", "fd00::1:0/112"),
])
def test_networks(text: str, expected: str) -> None:
    assert parse_network(text) == ipaddress.ip_network(expected)
