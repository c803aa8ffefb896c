"""The Device state machine on a simulated network and clock: handshakes, every timer rule, roaming, cookies.

Jitter is off (injected randomness), so the tests check the exact moments messages are sent.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.sim import Node, SimNetwork, udp4, udp6
from tests.protocol.test_replay import NaiveWindow
from wgpy.protocol.device import DropReason, Tunables
from wgpy.protocol.keypair import NONCE
from wgpy.protocol.messages import TRANSPORT_HEADER

INIT, RESP, COOKIE, DATA = 1, 2, 3, 4


def pair(net: SimNetwork, psk: bytes | None = None, tunables: Tunables | None = None,
         endpoints: tuple[bool, bool] = (True, True), keepalive: int = 0) -> tuple[Node, Node]:
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=11, tunables=tunables)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=22, tunables=tunables)
    net.connect(a, b, psk=psk, endpoint_on=endpoints, keepalive=keepalive)
    return a, b


def ping(net: SimNetwork, src: Node, dst: Node, n: int = 1, tag: bytes = b"") -> list[bytes]:
    packets = [udp4(src.tunnel_ip, dst.tunnel_ip, tag + struct.pack("!I", i)) for i in range(n)]
    net.send_ip(src, packets)
    return packets


def peer_of(node: Node, other: Node):  # type: ignore[no-untyped-def]
    assert other.device.public_key is not None
    peer = node.device.get_peer(other.device.public_key)
    assert peer is not None
    return peer


def test_first_packet_triggers_handshake_and_is_delivered_after_it() -> None:
    net = SimNetwork()
    a, b = pair(net)
    packets = ping(net, a, b, 3)
    assert [s.type for s in net.log] == [INIT]
    net.run_until(1.0)
    assert b.delivered == packets
    # a staged the packets, sent them right after the response; b confirmed the session with them.
    assert [s.type for s in net.sent("a")] == [INIT, DATA, DATA, DATA]
    assert [s.type for s in net.sent("b")] == [RESP]
    pa, pb = peer_of(a, b), peer_of(b, a)
    assert pa.current is not None and pb.current is not None and pb.next_keypair is None
    assert pa.current.local_index == pb.current.remote_index
    assert pa.last_handshake_wall > 0 and pb.last_handshake_wall > 0
    assert a.device.stats.handshakes_completed == 1 and b.device.stats.handshakes_completed == 1
    # tx/rx count whole messages, handshakes included (as the references do).
    assert pa.tx_bytes == sum(s.size for s in net.sent("a")) == pb.rx_bytes


def test_reply_uses_session_and_ipv6_inner() -> None:
    net = SimNetwork()
    a, b = pair(net)
    b.device.add_allowed_ip(peer_of(b, a), ipaddress.ip_network("fd00::1/128"))
    a.device.add_allowed_ip(peer_of(a, b), ipaddress.ip_network("fd00::2/128"))
    net.send_ip(a, [udp6("fd00::1", "fd00::2", b"hello")])
    net.run_until(1)
    net.send_ip(b, [udp6("fd00::2", "fd00::1", b"world")])
    net.run_until(2)
    assert a.delivered == [udp6("fd00::2", "fd00::1", b"world")]
    assert b.delivered == [udp6("fd00::1", "fd00::2", b"hello")]


def test_responder_cannot_send_before_confirmation() -> None:
    net = SimNetwork()
    a, b = pair(net)
    # Only the initiation and response happen; drop a's confirming keepalive by taking a offline right after.
    peer_b = peer_of(a, b)
    a.device.set_endpoint(peer_b, b.address, net.now, net.wall)
    net.pump()
    net.run_until(0.015)  # b has answered, a not yet received
    pb = peer_of(b, a)
    assert pb.next_keypair is not None and pb.current is None
    net.send_ip(b, [udp4("10.0.0.2", "10.0.0.1", b"early")])
    # b has no confirmed session, so its packet waits (b may try its own handshake, rate-limited).
    assert all(s.type != DATA for s in net.sent("b"))
    net.run_until(1)
    assert udp4("10.0.0.2", "10.0.0.1", b"early") in a.delivered


def test_psk_mismatch_gives_no_session() -> None:
    net = SimNetwork()
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=1)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=2)
    net.connect(a, b, psk=bytes(range(32)))
    peer_of(b, a)
    b.device.set_preshared_key(peer_of(b, a), bytes(range(1, 33)))
    ping(net, a, b)
    net.run_until(20)
    assert b.delivered == []
    assert peer_of(a, b).current is None
    assert a.device.stats.drops[DropReason.HANDSHAKE_FAILED] >= 1
    # The initiator keeps retrying every REKEY_TIMEOUT.
    assert [s.at for s in net.sent("a", INIT)] == [0, 5, 10, 15, 20]


def test_wrong_static_key_gets_silence() -> None:
    net = SimNetwork()
    a, _ = pair(net)
    stranger = net.add_node("s", "198.18.0.3", 51820, "10.0.0.3", seed=3)
    assert a.device.public_key is not None
    peer = stranger.device.add_peer(a.device.public_key, 0)  # a does not know the stranger
    stranger.device.add_allowed_ip(peer, ipaddress.ip_network("10.0.0.1/32"))
    peer.endpoint = a.address
    ping(net, stranger, a)
    net.run_until(3)
    assert net.sent("a") == []
    assert a.device.stats.drops[DropReason.HANDSHAKE_FAILED] == 1


def test_retry_schedule_and_give_up() -> None:
    """Timer rule 2: retries every REKEY_TIMEOUT with a fresh ephemeral until REKEY_ATTEMPT_TIME has passed."""
    net = SimNetwork()
    a, b = pair(net)
    b.online = False
    ping(net, a, b, 5)
    net.run_until(200)
    times = [s.at for s in net.sent("a", INIT)]
    # As Linux and wireguard-go: 1 + (REKEY_ATTEMPT_TIME / REKEY_TIMEOUT + 1) = 20 initiations, 5 s apart.
    assert times == [5.0 * i for i in range(20)]
    pa = peer_of(a, b)
    assert not pa.staged
    assert a.device.stats.drops[DropReason.HANDSHAKE_GAVE_UP] == 5
    # Give-up at t=100 arms key erasure at 100 + 3 * REJECT_AFTER_TIME.
    assert pa.timers.zero_key_material == 100 + 540
    inits = [d for d in net.log if d.src == "a"]
    assert len(inits) == 20


def test_fresh_ephemeral_on_each_retry() -> None:
    net = SimNetwork()
    a, b = pair(net)
    b.online = False
    seen: list[bytes] = []
    a.device.keylog = lambda peer, eph: seen.append(eph)
    ping(net, a, b)
    net.run_until(11)
    assert len(seen) == 3 and len(set(seen)) == 3


def test_rekey_after_time_by_initiator_only() -> None:
    """Timer rule 1: the initiator starts a new handshake when sending on a session older than REKEY_AFTER_TIME."""
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b, tag=b"first")
    t = 1.0
    net.run_until(t)
    while t < 130:
        ping(net, a, b, tag=b"a")
        ping(net, b, a, tag=b"b")
        t += 1.0
        net.run_until(t)
    inits_a = [s.at for s in net.sent("a", INIT)]
    # The session was derived at 0.02 (response arrival); the first send at or after 120.02 renews it.
    assert inits_a == [0.0, 121.0]
    assert net.sent("b", INIT) == []
    assert len(a.delivered) == 129 and len(b.delivered) == 130


def test_last_minute_handshake_on_receive() -> None:
    """Timer rule 3: the initiator, receiving on a session older than REJECT - KEEPALIVE - REKEY_TIMEOUT, renews."""
    net = SimNetwork()
    # Rule 1 pushed out of the way so rule 3 is seen on its own.
    a, b = pair(net, tunables=Tunables(rekey_after_time=10_000))
    ping(net, a, b)
    t = 1.0
    while t < 170:
        ping(net, b, a)
        t += 1.0
        net.run_until(t)
    inits = [s.at for s in net.sent("a", INIT)]
    # Session derived at 0.01; first packet received at or after 0.01 + 165 triggers exactly one initiation.
    assert inits == [0.0, 166.01]


def test_keepalive_after_one_way_traffic() -> None:
    """Timer rule 4: having received data and sent nothing for KEEPALIVE_TIMEOUT, send a keepalive."""
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    ping(net, b, a)  # b answers, so no keepalive is due from the first exchange
    net.run_until(2)
    net.log.clear()
    ping(net, a, b)  # at t=2, arrives at 2.01
    net.run_until(30)
    b_sent = net.sent("b")
    assert [(s.at, s.type, s.size) for s in b_sent] == [(12.01, DATA, 32)]
    # A keepalive is not data: it does not make a answer with a keepalive of its own.
    assert [s.at for s in net.sent("a")] == [2.0]


def test_keepalive_not_sent_when_replying() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    net.log.clear()
    ping(net, a, b)
    net.run_until(2)
    ping(net, b, a)
    net.run_until(30)
    assert [s.size for s in net.sent("b")] != [] and all(s.size > 32 for s in net.sent("b"))


def test_new_handshake_when_no_reply() -> None:
    """Timer rule 5: data sent, nothing authenticated back within KEEPALIVE + REKEY_TIMEOUT: new handshake."""
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    ping(net, b, a)
    net.run_until(1.5)
    b.online = False
    net.log.clear()
    ping(net, a, b)  # t = 1.5: nothing authenticated will come back
    net.run_until(17)
    assert [(s.at, s.type) for s in net.sent("a")] == [(1.5, DATA), (16.5, INIT)]


def test_persistent_keepalive() -> None:
    """Timer rule 6: a keepalive right after setting it, then whenever idle for N seconds."""
    net = SimNetwork()
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=1)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=2)
    net.connect(a, b, endpoint_on=(True, False))
    a.device.set_persistent_keepalive(peer_of(a, b), 25, net.now, net.wall)
    net.pump()
    net.run_until(80)
    a_sent = [(round(s.at, 3), s.type) for s in net.sent("a")]
    # Handshake at 0 (the keepalive needs a session), keepalive right after the response, then every 25 s idle.
    assert a_sent[:2] == [(0.0, INIT), (0.02, DATA)]
    keepalives = [t for t, kind in a_sent if kind == DATA]
    assert keepalives == [0.02, 25.02, 50.02, 75.02]
    # b learnt a's endpoint from the handshake (a is behind "NAT": b had no endpoint configured).
    assert peer_of(b, a).endpoint == a.address


def test_key_erasure_after_three_reject_times() -> None:
    """Timer rule 8: no new keys for 3 × REJECT_AFTER_TIME: everything of the session is erased."""
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(539)
    pa, pb = peer_of(a, b), peer_of(b, a)
    assert pa.current is not None and pb.current is not None
    net.run_until(541)
    assert pa.keypairs() == [] and pb.keypairs() == []
    assert len(a.device._keypairs) == 0 and len(b.device._keypairs) == 0


def test_expired_keys_neither_send_nor_receive() -> None:
    """Timer rule 7: a keypair older than REJECT_AFTER_TIME may not be used: sending starts a handshake."""
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    captured = []
    net.run_until(181)
    net.log.clear()
    captured = ping(net, b, a)  # b is responder: its session is 180.99 s old and must not be used
    assert [s.type for s in net.sent("b")] == [INIT]
    net.run_until(182)
    assert a.delivered[-1] == captured[0]


def test_staged_queue_is_bounded_newest_kept() -> None:
    net = SimNetwork()
    a, b = pair(net, tunables=Tunables(max_staged_packets=4))
    b.online = False
    ping(net, a, b, 10)
    pa = peer_of(a, b)
    assert len(pa.staged) == 4
    assert a.device.stats.drops[DropReason.STAGED_OVERFLOW] == 6
    b.online = True
    net.run_until(6)
    assert [p[-4:] for p in b.delivered] == [struct.pack("!I", i) for i in range(6, 10)]


def test_roaming_updates_endpoint() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    b.address = ("198.18.1.2", 40000)
    ping(net, b, a, tag=b"from new address")
    net.run_until(2)
    assert peer_of(a, b).endpoint == ("198.18.1.2", 40000)
    ping(net, a, b, tag=b"reply")
    net.run_until(3)
    assert b.delivered[-1].endswith(b"reply" + struct.pack("!I", 0))


def test_unauthenticated_packet_does_not_roam() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    forged = bytearray(net.log[-1].size)
    forged[0] = DATA
    a.device.receive([(bytes(forged), ("198.18.9.9", 1))], net.now, net.wall)
    assert peer_of(a, b).endpoint == b.address


def test_source_filtering() -> None:
    net = SimNetwork()
    a, b = pair(net)
    net.send_ip(a, [udp4("10.0.0.1", "10.0.0.2", b"ok")])
    net.run_until(1)
    # b sends a packet claiming a source that a does not route to b: a must drop it after decrypting.
    b.device.add_allowed_ip(peer_of(b, a), ipaddress.ip_network("10.9.0.0/16"))
    net.send_ip(b, [udp4("10.9.9.9", "10.9.0.1", b"spoof")])
    net.run_until(2)
    assert a.delivered == []
    assert a.device.stats.drops[DropReason.SOURCE_NOT_ALLOWED] == 1


def test_duplicated_datagrams_delivered_once() -> None:
    net = SimNetwork(duplicate=1.0)
    a, b = pair(net)
    sent = ping(net, a, b, 20)
    net.run_until(1)
    assert b.delivered == sent
    assert b.device.stats.drops[DropReason.REPLAY] >= 20


# Batches as a receiver sees them: in-order runs (the fast path of Device.receive), duplicates inside and across
# batches, packets from before the window, and jumps; forgeries (a good counter, a bad tag) are mixed in.
_transport_batches = st.lists(
    st.lists(
        st.one_of(
            st.tuples(st.just("next"), st.integers(1, 3)),
            st.tuples(st.just("next"), st.just(1)),
            st.tuples(st.just("back"), st.integers(0, 9000)),
            st.tuples(st.just("jump"), st.integers(1, 20_000)),
        ),
        min_size=1, max_size=80,
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=120, deadline=None)
@given(batches=_transport_batches, forged_every=st.integers(0, 7))
def test_transport_batches_accept_exactly_what_the_replay_rule_accepts(
    batches: list[list[tuple[str, int]]], forged_every: int
) -> None:
    """Whatever order, repetition and forgery a batch holds, Device.receive delivers exactly the packets that
    the replay rule, applied one packet at a time, accepts (NaiveWindow: a set and the maximum), in their
    order, and counts every other one."""
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    b.delivered.clear()
    kp = peer_of(a, b).current
    model = NaiveWindow()
    for counter in range(kp.send_counter):  # what the handshake's ping already used
        model.mark(counter)
    highest = kp.send_counter - 1
    expect: list[int] = []
    replays = forgeries = 0
    for number, batch in enumerate(batches):
        datagrams = []
        for i, (move, step) in enumerate(batch):
            counter = highest + step if move in ("next", "jump") else max(0, highest - step)
            forged = forged_every and (number + i) % forged_every == 0
            inner = udp4(a.tunnel_ip, b.tunnel_ip, struct.pack("!Q", counter))
            message = bytearray(TRANSPORT_HEADER.pack(DATA, kp.remote_index, counter)
                                + kp.send_aead.encrypt(NONCE.pack(counter), inner, None))
            if forged:
                message[-1] ^= 1
                if model.ok(counter):  # the cheap replay check comes before authentication
                    forgeries += 1
                else:
                    replays += 1
            elif model.mark(counter):
                expect.append(counter)
                highest = max(highest, counter)
            else:
                replays += 1
            datagrams.append((bytes(message), a.address))
        b.device.receive(datagrams, net.now, net.wall)
        delivered = [struct.unpack("!Q", p[-8:])[0] for p in b.device.take_packets()]
        assert delivered == expect
        expect.clear()
    assert b.device.stats.drops[DropReason.REPLAY] == replays
    assert b.device.stats.drops[DropReason.DECRYPT_FAILED] == forgeries


def test_replayed_initiation_rejected() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    captured: list[tuple[bytes, tuple[str, int]]] = []
    orig = b.device.receive

    def spy(datagrams, now, wall):  # type: ignore[no-untyped-def]
        datagrams = list(datagrams)
        captured.extend(datagrams)
        orig(datagrams, now, wall)

    b.device.receive = spy  # type: ignore[method-assign]
    net.run_until(1)
    initiation = next(d for d in captured if d[0][0] == INIT)
    b.device.receive = orig  # type: ignore[method-assign]
    before = b.device.stats.handshake_responses_sent
    b.device.receive([initiation], net.now, net.wall)
    assert b.device.stats.handshake_responses_sent == before
    assert b.device.stats.drops[DropReason.STALE_TIMESTAMP] == 1


def test_no_route_is_counted() -> None:
    net = SimNetwork()
    a, _ = pair(net)
    net.send_ip(a, [udp4("10.0.0.1", "10.77.0.1", b"x")])
    assert a.device.stats.drops[DropReason.NO_ROUTE] == 1
    assert net.log == []


def test_garbage_is_dropped_and_counted() -> None:
    net = SimNetwork()
    a, _ = pair(net)
    junk = [b"", b"\x01", b"\x01\x00\x00\x00" + bytes(144), b"\x05\x00\x00\x00" + bytes(40),
            b"\x04\x00\x00\x00" + bytes(10), b"\x02\x00\x00\x00" + bytes(50), b"\x01\x01\x00\x00" + bytes(144)]
    a.device.receive([(j, ("198.18.0.9", 9)) for j in junk], 0, net.wall)
    net.pump()
    assert net.log == []
    assert sum(a.device.stats.drops.values()) == len(junk)


def test_under_load_cookie_dance() -> None:
    """Under load, an initiation without a valid mac2 gets a cookie reply; the initiator then retries with mac2."""
    net = SimNetwork()
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=1)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=2, tunables=Tunables(under_load_handshakes=1))
    net.connect(a, b)
    ping(net, a, b)
    net.run_until(0.5)
    assert [s.type for s in net.sent("b")] == [COOKIE]
    assert a.device.stats.cookie_replies_received == 1
    net.run_until(6)
    # The retry at 5 s carries mac2 and is accepted.
    assert [s.type for s in net.sent("b")] == [COOKIE, RESP]
    assert len(b.delivered) == 1


def test_cookie_replies_are_rate_limited_per_source() -> None:
    net = SimNetwork()
    a, b = pair(net, tunables=Tunables(under_load_handshakes=1))
    ping(net, a, b)
    initiation = net._flights[0].data
    for i in range(100):
        b.device.receive([(initiation, ("198.18.0.1", 51820))], 0.001 * i, net.wall)
    replies = [d for _, ds in b.device.take_datagrams() for d in ds]
    assert 1 <= len(replies) <= 10
    assert b.device.stats.drops[DropReason.RATE_LIMITED] >= 90


def test_ten_minutes_with_loss_no_duplicates_unique_keys() -> None:
    net = SimNetwork(seed=7, loss=0.05, duplicate=0.02, reorder=0.02)
    a, b = pair(net)
    keys: set[bytes] = set()
    sent_a: list[bytes] = []
    sent_b: list[bytes] = []
    t = 0.0
    n = 0
    while t < 600:
        sent_a += ping(net, a, b, tag=b"a%d" % n)
        sent_b += ping(net, b, a, tag=b"b%d" % n)
        n += 1
        t += 0.5
        net.run_until(t)
        for node in (a, b):
            for kp in node.device._keypairs.values():
                keys.add(kp.local_index.to_bytes(4, "little") + node.name.encode())
    net.run_until(610)
    for node, sent in ((b, sent_a), (a, sent_b)):
        assert len(node.delivered) == len(set(node.delivered)), "a packet was delivered twice"
        assert set(node.delivered) <= set(sent)
        assert len(node.delivered) > 0.85 * len(sent)
    # Rekeyed every ~2 minutes, each session with its own keys.
    sessions = [s for s in net.log if s.type == RESP]
    assert len(sessions) >= 4
    assert a.device.stats.handshakes_completed >= 4


def test_session_keys_unique_across_rekeys(monkeypatch: pytest.MonkeyPatch) -> None:
    import wgpy.protocol.device as device_module

    send_keys: list[bytes] = []
    real = device_module.Keypair

    def spy(peer, send_key, receive_key, *rest):  # type: ignore[no-untyped-def]
        send_keys.append(send_key)
        return real(peer, send_key, receive_key, *rest)

    monkeypatch.setattr(device_module, "Keypair", spy)
    net = SimNetwork()
    a, b = pair(net)
    t = 0.0
    while t < 400:
        ping(net, a, b)
        t += 1
        net.run_until(t)
    # Each handshake gives one keypair on each side; a sends with what b receives with, never reused.
    assert len(send_keys) >= 8
    assert len(set(send_keys)) == len(send_keys)


def test_remove_peer_forgets_its_sessions() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    assert b.device.public_key is not None
    a.device.remove_peer(b.device.public_key)
    assert a.device._keypairs == {} and a.device.next_deadline() is None
    ping(net, b, a)
    net.run_until(2)
    assert a.delivered == []


def test_private_key_change_forces_new_handshake() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(10)
    pb = peer_of(b, a)
    new_key = bytes([7] * 32)
    a.device.set_private_key(new_key, net.now)
    assert a.device.public_key is not None
    # b learns a's new public key.
    b.device.remove_peer(pb.public_key)
    peer = b.device.add_peer(a.device.public_key, net.now)
    b.device.add_allowed_ip(peer, ipaddress.ip_network("10.0.0.1/32"))
    peer.endpoint = a.address
    net.log.clear()
    ping(net, a, b)
    assert [s.type for s in net.sent("a")] == [INIT]
    net.run_until(11)
    assert len(b.delivered) == 2


@pytest.mark.parametrize("size", [1, 15, 16, 17, 1419, 1420])
def test_padding_to_16_but_not_beyond_mtu(size: int) -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    net.log.clear()
    payload = bytes(size - 28) if size >= 28 else b""
    packet = udp4("10.0.0.1", "10.0.0.2", payload)[: max(size, 28)]
    net.send_ip(a, [packet])
    expected_plain = min(-(-len(packet) // 16) * 16, max(1420, len(packet)))
    assert net.sent("a")[0].size == 16 + expected_plain + 16
    net.run_until(2)
    assert b.delivered[-1] == packet


def test_batch_routes_each_packet_and_filters_each_source() -> None:
    """The per-call route caches must never carry one packet's answer over to a packet that differs."""
    net = SimNetwork()
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=1)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=2)
    c = net.add_node("c", "198.18.0.3", 51820, "10.0.0.3", seed=3)
    net.connect(a, b)
    net.connect(a, c)
    batch = [udp4("10.0.0.1", "10.0.0.2" if i % 3 else "10.0.0.3", b"%d" % i) for i in range(12)]
    net.send_ip(a, batch)
    net.run_until(1)
    assert b.delivered == [p for i, p in enumerate(batch) if i % 3]
    assert c.delivered == [p for i, p in enumerate(batch) if not i % 3]
    # b sends a batch in which every other packet claims c's address as its source: those are dropped by a.
    b.device.add_allowed_ip(peer_of(b, a), ipaddress.ip_network("10.0.0.0/24"))
    mixed = [udp4("10.0.0.2" if i % 2 else "10.0.0.3", "10.0.0.1", b"%d" % i) for i in range(8)]
    net.send_ip(b, mixed)
    net.run_until(2)
    assert a.delivered == mixed[1::2]
    assert a.device.stats.drops[DropReason.SOURCE_NOT_ALLOWED] == 4


def test_cookie_replies_are_bounded_device_wide() -> None:
    """A flood from many spoofed sources: the per-source limit never binds, the device-wide budget does."""
    net = SimNetwork()
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=1)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=2,
                     tunables=Tunables(under_load_handshakes=1, max_cookie_replies_per_second=100))
    net.connect(a, b)
    ping(net, a, b)
    initiation = net._flights[0].data
    sources = [(f"198.19.{i // 250}.{i % 250 + 1}", 1024 + i) for i in range(2000)]
    b.device.receive([(initiation, src) for src in sources], 0.5, net.wall)
    replies = [d for _, ds in b.device.take_datagrams() for d in ds]
    assert len(replies) == 100
    # Tokens come back at the configured rate.
    b.device.receive([(initiation, src) for src in sources[:500]], 1.0, net.wall)
    assert sum(len(ds) for _, ds in b.device.take_datagrams()) == 50


def test_link_down_erases_sessions_and_up_sends_persistent_keepalive() -> None:
    net = SimNetwork()
    a, b = pair(net)
    ping(net, a, b)
    net.run_until(1)
    pa = peer_of(a, b)
    a.device.set_persistent_keepalive(pa, 25, net.now, net.wall)
    net.pump()
    a.device.set_link_up(False, net.now, net.wall)
    assert pa.keypairs() == [] and a.device.next_deadline() is None
    ping(net, b, a)  # b still has a session: its packet is refused while a is down
    net.run_until(2)
    assert a.delivered == [] and a.device.stats.drops[DropReason.LINK_DOWN] >= 1
    net.log.clear()
    a.device.set_link_up(True, net.now, net.wall)
    net.pump()
    # Up again: the persistent keepalive needs a session, so a handshake starts at once.
    assert [s.type for s in net.sent("a")] == [INIT]
    net.run_until(3)
    assert pa.current is not None
