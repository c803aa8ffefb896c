"""Applying sets to a real Device: wireguard-go's semantics, all-or-nothing, and get answers in its format."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from wgpy.protocol.crypto import public_key
from wgpy.protocol.device import Device
from wgpy.uapi.apply import SocketControl, apply_set, format_get, format_stats, snapshot
from wgpy.uapi.request import (
    EADDRINUSE,
    EIO,
    PeerSection,
    SetPersistentKeepalive,
    SetRequest,
    UapiError,
    parse_request,
)

PRIV = bytes.fromhex("f8da0f6143c2a52dee75d1b9d411a2f0cc6f39d7026a30189ad7eba25578b672")
P1, P2, P3 = (public_key(bytes([i]) * 32) for i in (1, 2, 3))
NOW, WALL = 1000.0, 1_700_000_000.0


def run(device: Device, text: str, sockets: SocketControl | None = None) -> None:
    lines = text.strip("\n").split("\n") if text.strip() else []
    request = parse_request("set=1", lines)
    assert isinstance(request, SetRequest)
    apply_set(device, request, NOW, WALL, sockets)


def config(device: Device) -> str:
    return format_get(device)


def test_get_matches_wireguard_go_sample(vectors_dir: Path) -> None:
    sample = (vectors_dir / "uapi-get-sample.txt").read_text()
    device = Device()
    run(device, f"""
private_key={PRIV.hex()}
listen_port=51820
public_key=12b4b55bedafeb67dc4e7c842bbcfc6db97e97fe62b4fbca6270457937941223
allowed_ip=10.99.0.2/32
""")
    peer = device.peers()[0]
    peer.endpoint = ("192.0.2.2", 51820)  # set directly: set_endpoint would start a handshake
    peer.last_handshake_wall = 1795562967.235200898
    peer.tx_bytes, peer.rx_bytes = 276, 220
    got = format_get(device) + "errno=0\n\n"
    expected = sample.replace("last_handshake_time_nsec=235200898", "last_handshake_time_nsec=235200977")
    # A float holds the wall time to about 0.2 µs: compare nanoseconds loosely, everything else exactly.
    got_lines, sample_lines = got.splitlines(), expected.splitlines()
    assert [line.split("=")[0] for line in got_lines] == [line.split("=")[0] for line in sample_lines]
    for a, b in zip(got_lines, sample_lines, strict=True):
        if a.startswith("last_handshake_time_nsec="):
            assert abs(int(a.split("=")[1]) - 235200898) < 1000
        else:
            assert a == b


def test_fwmark_shown_only_when_set_and_private_key_cleared() -> None:
    device = Device()
    run(device, f"private_key={PRIV.hex()}\nfwmark=7")
    assert "fwmark=7\n" in config(device)
    run(device, "fwmark=0\nprivate_key=" + "0" * 64)
    assert config(device) == "listen_port=0\n"


def test_peer_keys_and_allowed_ips() -> None:
    device = Device()
    run(device, f"""
private_key={PRIV.hex()}
public_key={P1.hex()}
preshared_key={"ab" * 32}
persistent_keepalive_interval=25
allowed_ip=10.0.0.0/8
allowed_ip=fd00::/64
public_key={P2.hex()}
allowed_ip=10.1.0.0/16
""")
    p1, p2 = device.get_peer(P1), device.get_peer(P2)
    assert p1 is not None and p2 is not None
    assert p1.preshared_key == bytes([0xAB]) * 32 and p1.persistent_keepalive == 25
    assert set(device.allowed_ips.entries_for(p1)) == {ipaddress.ip_network("10.0.0.0/8"),
                                                        ipaddress.ip_network("fd00::/64")}
    # Overlapping prefixes: the longest match wins.
    assert device.allowed_ips.lookup(bytes([10, 1, 2, 3])) is p2
    assert device.allowed_ips.lookup(bytes([10, 2, 2, 3])) is p1
    # A prefix moves from one peer to the other.
    run(device, f"public_key={P2.hex()}\nallowed_ip=10.0.0.0/8")
    assert ipaddress.ip_network("10.0.0.0/8") not in device.allowed_ips.entries_for(p1)
    run(device, f"public_key={P1.hex()}\nreplace_allowed_ips=true\nallowed_ip=10.5.0.0/16\npreshared_key=" + "0" * 64)
    assert device.allowed_ips.entries_for(p1) == [ipaddress.ip_network("10.5.0.0/16")]
    assert p1.preshared_key is None
    assert "preshared_key=" + "0" * 64 in config(device)


def test_endpoint_starts_a_handshake_at_once() -> None:
    device = Device()
    run(device, f"private_key={PRIV.hex()}\npublic_key={P1.hex()}\nendpoint=[fd00::2]:51820\nallowed_ip=10.0.0.2/32")
    out = device.take_datagrams()
    assert out and out[0][0] == ("fd00::2", 51820) and out[0][1][0][0] == 1  # a handshake initiation
    assert "endpoint=[fd00::2]:51820\n" in config(device)


def test_update_only_remove_replace_peers_and_self() -> None:
    device = Device()
    run(device, f"private_key={PRIV.hex()}\npublic_key={P1.hex()}\npublic_key={P2.hex()}")
    run(device, f"public_key={P3.hex()}\nupdate_only=true\nallowed_ip=10.3.0.0/16")
    assert device.get_peer(P3) is None
    assert not any(e for p in device.peers() for e in device.allowed_ips.entries_for(p))
    run(device, f"public_key={P1.hex()}\nupdate_only=true\npersistent_keepalive_interval=5")
    p1 = device.get_peer(P1)
    assert p1 is not None and p1.persistent_keepalive == 5
    run(device, f"public_key={P1.hex()}\nremove=true\nallowed_ip=10.1.0.0/16")
    assert device.get_peer(P1) is None and [p.public_key for p in device.peers()] == [P2]
    own = public_key(PRIV)
    run(device, f"public_key={own.hex()}\nallowed_ip=10.9.0.0/16")
    assert device.get_peer(own) is None
    run(device, f"replace_peers=true\npublic_key={P3.hex()}")
    assert [p.public_key for p in device.peers()] == [P3]


def test_refused_set_changes_nothing() -> None:
    """The request wireguard-go half-applies (see tests/integration/test_daemon_uapi.py) changes nothing here."""
    device = Device()
    run(device, f"private_key={PRIV.hex()}\npublic_key={P1.hex()}\nallowed_ip=10.0.0.0/8")
    before = config(device)
    with pytest.raises(UapiError):
        run(device, f"public_key={P2.hex()}\nendpoint=1.2.3.4:5\nallowed_ip=10.9.0.0/16\nfoo=bar")
    assert config(device) == before


def _real_sockets(holder: list[socket.socket]) -> SocketControl:
    """Real UDP sockets on loopback, as the daemon's rebind would manage them."""

    def rebind(port: int) -> int:
        new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            new.bind(("127.0.0.1", port))
        except OSError:
            new.close()
            raise
        for old in holder:
            old.close()
        holder[:] = [new]
        return int(new.getsockname()[1])

    def set_fwmark(mark: int) -> None:
        for sock in holder:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)

    return SocketControl(rebind, set_fwmark)


def test_port_in_use_changes_nothing() -> None:
    holder: list[socket.socket] = []
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        sockets = _real_sockets(holder)
        device = Device()
        device.listen_port = sockets.rebind(0)  # as the daemon binds at start
        run(device, f"private_key={PRIV.hex()}\nlisten_port=0", sockets)  # 0 differs: a new random port
        assert device.listen_port == holder[0].getsockname()[1] != 0
        before = config(device)
        with pytest.raises(UapiError) as info:
            run(device, f"private_key={'11' * 32}\nlisten_port={busy.getsockname()[1]}\npublic_key={P1.hex()}",
                sockets)
        assert info.value.code == EADDRINUSE
        assert config(device) == before
    finally:
        busy.close()
        for sock in holder:
            sock.close()


def test_failure_while_applying_restores_everything() -> None:
    """Defence in depth: an operation the parser could never produce makes the Device raise half-way."""
    device = Device()
    run(device, f"private_key={PRIV.hex()}\npublic_key={P1.hex()}\nallowed_ip=10.0.0.0/8")
    before, saved = config(device), snapshot(device)
    bad = SetRequest((), (
        PeerSection(P2, ()),
        PeerSection(P1, (SetPersistentKeepalive(70000),)),
    ))
    with pytest.raises(UapiError) as info:
        apply_set(device, bad, NOW, WALL)
    assert info.value.code == EIO
    assert config(device) == before and snapshot(device) == saved


def test_stats() -> None:
    text = format_stats(Device())
    assert "drop_replay=0\n" in text and "handshakes_completed=0\n" in text


def test_ipv4_mapped_endpoint_printed_like_wireguard_go() -> None:
    from wgpy.uapi.apply import format_endpoint

    assert format_endpoint(("::ffff:102:304", 51820)) == "[::ffff:1.2.3.4]:51820"
    assert format_endpoint(("fd00::1", 1)) == "[fd00::1]:1"
    assert format_endpoint(("198.18.0.1", 2)) == "198.18.0.1:2"
