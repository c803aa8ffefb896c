"""Hostile input at the Device level: replays, forged counters, handshake floods, spoofed sources, secrets.

Everything runs on the simulated network and clock of ``sim.py``: deterministic, no sockets. The expensive
operation an attacker wants to force is X25519; :class:`X25519Counter` counts every one (the DH exchange and
the key-pair construction that computes a public key), so "no DH was done" is asserted, not assumed.
"""

from __future__ import annotations

import base64
import ipaddress
import random
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.protocol.sim import WALL_EPOCH, Node, SimNetwork, udp4
from wgpy import keys
from wgpy.protocol import crypto
from wgpy.protocol.constants import LABEL_MAC1
from wgpy.protocol.device import Device, DropReason, Tunables
from wgpy.protocol.messages import INITIATION_MAC1_OFFSET, INITIATION_SIZE, TRANSPORT_HEADER
from wgpy.protocol.peer import Endpoint, Peer
from wgpy.protocol.ratelimiter import RateLimiter
from wgpy.uapi.request import UapiError, parse_request

INIT, RESP, COOKIE, DATA = 1, 2, 3, 4
PSK = bytes(range(100, 132))


class X25519Counter:
    """Counts X25519 scalar multiplications: DH exchanges and private-key objects (each computes a public key)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.exchanges = 0
        self.keys = 0
        real_exchange = crypto._exchange
        real_init = crypto.PrivateKey.__init__

        def exchange(private, public):  # type: ignore[no-untyped-def]
            self.exchanges += 1
            return real_exchange(private, public)

        def init(key_self, private):  # type: ignore[no-untyped-def]
            self.keys += 1
            real_init(key_self, private)

        monkeypatch.setattr(crypto, "_exchange", exchange)
        monkeypatch.setattr(crypto.PrivateKey, "__init__", init)

    @property
    def total(self) -> int:
        return self.exchanges + self.keys


class Recorder:
    """Wraps a device's ``receive`` to keep every datagram the network delivered to it."""

    def __init__(self, node: Node) -> None:
        self.datagrams: list[tuple[bytes, Endpoint]] = []
        device = node.device
        real = device.receive

        def receive(datagrams, now, wall):  # type: ignore[no-untyped-def]
            batch = list(datagrams)
            self.datagrams.extend(batch)
            real(batch, now, wall)

        device.receive = receive  # type: ignore[method-assign]


def pair(net: SimNetwork, tunables_b: Tunables | None = None, psk: bytes | None = None) -> tuple[Node, Node]:
    a = net.add_node("a", "198.18.0.1", 51820, "10.0.0.1", seed=11)
    b = net.add_node("b", "198.18.0.2", 51820, "10.0.0.2", seed=22, tunables=tunables_b)
    net.connect(a, b, psk=psk)
    return a, b


def peer_of(node: Node, other: Node) -> Peer:
    assert other.device.public_key is not None
    peer = node.device.get_peer(other.device.public_key)
    assert peer is not None
    return peer


def ping(net: SimNetwork, src: Node, dst: Node, tag: bytes) -> bytes:
    packet = udp4(src.tunnel_ip, dst.tunnel_ip, tag)
    net.send_ip(src, [packet])
    return packet


def total_drops(device: Device) -> int:
    return sum(device.stats.drops.values())


def drops_by_reason(device: Device) -> Counter[DropReason]:
    return Counter({reason: n for reason, n in device.stats.drops.items() if n})


def established(net: SimNetwork, tunables_b: Tunables | None = None) -> tuple[Node, Node]:
    a, b = pair(net, tunables_b)
    ping(net, a, b, b"hello")
    # Under load, the first initiation is answered with a cookie and the retry 5 s later carries mac2.
    net.run_until(net.now + (6 if tunables_b else 1))
    assert b.delivered == [udp4("10.0.0.1", "10.0.0.2", b"hello")]
    return a, b


# --- replays -----------------------------------------------------------------------------------------------------


def test_whole_captured_session_replayed_is_rejected_and_counted() -> None:
    """Five simulated minutes of traffic both ways, with rekeys, captured at b and replayed to b afterwards."""
    net = SimNetwork(seed=3)
    a, b = pair(net)
    capture = Recorder(b)
    t = 0.0
    while t < 300:
        ping(net, a, b, b"a%d" % int(t))
        ping(net, b, a, b"b%d" % int(t))
        t += 7
        net.run_until(t)
    kinds = Counter(d[0] for d, _ in capture.datagrams)
    assert kinds[INIT] >= 2 and kinds[DATA] >= 40, kinds  # rekeyed at least once, real traffic
    delivered = len(b.delivered)
    current = peer_of(b, a).current
    assert current is not None
    drops_before = drops_by_reason(b.device)
    net.log.clear()

    replayed = list(capture.datagrams)
    b.device.receive(replayed, net.now, net.wall)
    net.pump()

    new = drops_by_reason(b.device) - drops_before
    assert sum(new.values()) == len(replayed), "every replayed datagram is dropped and counted exactly once"
    assert set(new) <= {
        DropReason.REPLAY, DropReason.STALE_TIMESTAMP, DropReason.UNKNOWN_INDEX, DropReason.UNEXPECTED_RESPONSE,
        DropReason.KEY_EXPIRED,
    }, new
    assert new[DropReason.STALE_TIMESTAMP] == kinds[INIT]
    assert new[DropReason.REPLAY] > 0
    assert len(b.delivered) == delivered, "a replayed packet reached the TUN"
    assert net.sent("b") == [], "b answered a replay"
    assert peer_of(b, a).current is current, "a replay changed the session"
    # The live session keeps working both ways.
    sent_ab = ping(net, a, b, b"after replay")
    sent_ba = ping(net, b, a, b"after replay too")
    net.run_until(net.now + 1)
    assert b.delivered[-1] == sent_ab and a.delivered[-1] == sent_ba


def test_single_transport_packet_replayed() -> None:
    net = SimNetwork()
    a, b = established(net)
    capture = Recorder(b)
    packet = ping(net, a, b, b"once")
    net.run_until(net.now + 1)
    (datagram,) = [d for d in capture.datagrams if d[0][0] == DATA]
    assert b.delivered.count(packet) == 1
    for _ in range(3):
        b.device.receive([datagram], net.now, net.wall)
        net.pump()
    assert b.delivered.count(packet) == 1
    assert b.device.stats.drops[DropReason.REPLAY] == 3


def test_replayed_initiation_gets_no_answer_and_keeps_the_session() -> None:
    net = SimNetwork()
    a, b = pair(net)
    capture = Recorder(b)
    ping(net, a, b, b"x")
    net.run_until(1)
    (initiation,) = [d for d in capture.datagrams if d[0][0] == INIT]
    session = peer_of(b, a).current
    net.log.clear()
    for _ in range(5):
        net.now += 1  # past the 1/50 s initiation rate: the timestamp is what refuses it
        b.device.receive([initiation], net.now, net.wall)
        net.pump()
    assert net.sent("b") == []
    assert b.device.stats.drops[DropReason.STALE_TIMESTAMP] == 5
    assert peer_of(b, a).current is session


def _forge_counter(datagram: bytes, counter: int) -> bytes:
    _, receiver, _ = TRANSPORT_HEADER.unpack_from(datagram)
    return TRANSPORT_HEADER.pack(DATA, receiver, counter) + datagram[16:]


@pytest.mark.parametrize("ahead", [1, 100, 8129, 100_000, 2**60])
def test_counter_far_ahead_with_bad_tag_does_not_move_the_window(ahead: int) -> None:
    net = SimNetwork()
    a, b = established(net)
    capture = Recorder(b)
    ping(net, a, b, b"one")
    net.run_until(net.now + 1)
    (datagram,) = [d for d, _ in capture.datagrams if d[0] == DATA]
    kp = peer_of(b, a).current
    assert kp is not None
    highest = kp.replay.highest
    assert highest is not None
    forged = _forge_counter(datagram, highest + ahead)  # the tag was made for another nonce
    b.device.receive([(forged, a.address)], net.now, net.wall)
    assert b.device.stats.drops[DropReason.DECRYPT_FAILED] == 1
    assert kp.replay.highest == highest, "an unauthenticated counter advanced the window"
    # The next genuine packet (counter highest + 1) is still accepted, which it would not be had the window
    # slid more than 8128 ahead.
    packet = ping(net, a, b, b"two")
    net.run_until(net.now + 1)
    assert b.delivered[-1] == packet
    assert kp.replay.highest == highest + 1


def test_forged_packets_do_not_roam_or_refresh() -> None:
    net = SimNetwork()
    a, b = established(net)
    peer = peer_of(b, a)
    endpoint, rx = peer.endpoint, peer.rx_bytes
    rng = random.Random(5)
    kp = peer.current
    assert kp is not None
    forged = [TRANSPORT_HEADER.pack(DATA, kp.local_index, rng.getrandbits(64)) + rng.randbytes(48)
              for _ in range(200)]
    b.device.receive([(f, ("203.0.113.66", 666)) for f in forged], net.now, net.wall)
    assert peer.endpoint == endpoint and peer.rx_bytes == rx
    assert b.device.stats.drops[DropReason.DECRYPT_FAILED] + b.device.stats.drops[DropReason.REPLAY] == 200


# --- handshake floods --------------------------------------------------------------------------------------------


def _random_initiations(n: int, rng: random.Random, mac1_key: bytes | None = None) -> Iterator[bytes]:
    for _ in range(n):
        message = b"\x01\0\0\0" + rng.randbytes(INITIATION_SIZE - 4)
        if mac1_key is not None:
            off = INITIATION_MAC1_OFFSET
            message = message[:off] + crypto.mac(mac1_key, message[:off]) + message[off + 16 :]
        yield message


def test_bad_mac1_flood_costs_no_dh(monkeypatch: pytest.MonkeyPatch) -> None:
    net = SimNetwork()
    a, b = established(net)
    dh = X25519Counter(monkeypatch)
    net.log.clear()
    rng = random.Random(1)
    flood = [(m, (f"198.51.100.{i % 250}", 1000 + i)) for i, m in enumerate(_random_initiations(2000, rng))]
    before = total_drops(b.device)
    b.device.receive(flood, net.now, net.wall)
    net.pump()
    assert b.device.stats.drops[DropReason.BAD_MAC1] == 2000
    assert total_drops(b.device) - before == 2000
    assert dh.total == 0, "a message with a bad mac1 cost an X25519 operation"
    assert net.sent("b", COOKIE) == [] and net.sent("b", RESP) == []
    # Positive control: the counter does see the DH of a genuine handshake.
    ping(net, a, b, b"still here")
    net.run_until(net.now + 1)
    assert b.delivered[-1] == udp4("10.0.0.1", "10.0.0.2", b"still here")
    net.now += 200  # past REJECT_AFTER_TIME: the next packet needs a new handshake
    ping(net, a, b, b"new session")
    net.run_until(net.now + 1)
    assert dh.total > 0


def test_spoofed_valid_mac1_flood_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Initiations that pass mac1 (anyone with b's public key can make them) from 3,000 spoofed sources, while
    b is under load: each gets at most a rate-limited cookie reply, none costs a DH, and the live session keeps
    delivering in the middle of it."""
    net = SimNetwork()
    # Under load from the first handshake message of every one-second window, so the flood never gets a DH.
    a, b = established(net, Tunables(under_load_handshakes=1))
    assert b.device.public_key is not None
    mac1_key = crypto.hash(LABEL_MAC1, b.device.public_key)
    rng = random.Random(2)
    dh = X25519Counter(monkeypatch)
    handshakes_before = len(b.device._handshakes), len(b.device._keypairs)
    sources = [(str(ipaddress.IPv4Address(0xC6336400 + i)), 40000 + i % 7) for i in range(3000)]
    hot = ("192.0.2.7", 5555)  # one source that sends far more than its share
    flood: list[tuple[bytes, Endpoint]] = []
    for i, message in enumerate(_random_initiations(4000, rng, mac1_key)):
        flood.append((message, hot if i % 4 == 3 else sources[i % len(sources)]))
    before = total_drops(b.device)
    cookies_before = b.device.stats.cookie_replies_sent
    bad_mac2_before = b.device.stats.drops[DropReason.BAD_MAC2]
    net.log.clear()
    delivered = []
    for chunk in range(0, len(flood), 500):
        b.device.receive(flood[chunk : chunk + 500], net.now, net.wall)
        net.pump()
        delivered.append(ping(net, a, b, b"during flood %d" % chunk))
        net.run_until(net.now + 0.02)
    assert dh.total == 0, "a spoofed initiation without a valid mac2 cost an X25519 operation under load"
    assert total_drops(b.device) - before == len(flood), "every flood message is counted exactly once"
    cookies = b.device.stats.cookie_replies_sent - cookies_before
    per_destination = Counter(s.dst for s in net.sent("b", COOKIE))
    assert sum(per_destination.values()) == cookies
    assert b.device.stats.drops[DropReason.BAD_MAC2] - bad_mac2_before == cookies
    # Per source: the burst (5), plus what refills at 20/s over the ~0.2 s the flood lasted.
    assert 1 <= per_destination[hot] <= 5 + 20 * 0.2 + 1, per_destination[hot]
    assert b.device.stats.drops[DropReason.RATE_LIMITED] >= 1000 - per_destination[hot]
    assert max(n for d, n in per_destination.items() if d != hot) <= 5
    assert all(d[0] in {s[0] for s in sources} | {hot[0]} for d in per_destination), "cookie sent elsewhere"
    # The live session delivered every packet sent during the flood, and no handshake state was created.
    assert all(p in b.delivered for p in delivered)
    assert (len(b.device._handshakes), len(b.device._keypairs)) == handshakes_before
    # Memory: one rate-limiter entry per source at most, and the table empties once the sources go quiet.
    assert len(b.device.cookie_ratelimiter) <= len(sources) + 1
    net.run_until(net.now + 2)
    b.device.receive([(next(_random_initiations(1, rng, mac1_key)), hot)], net.now, net.wall)
    assert len(b.device.cookie_ratelimiter) <= 1


def test_rate_limiter_table_is_bounded_under_a_spoofed_flood() -> None:
    """With a small table, 5,000 distinct spoofed sources within a quarter second cannot grow it past its bound."""
    net = SimNetwork()
    a, b = established(net, Tunables(under_load_handshakes=1))
    assert b.device.public_key is not None
    b.device.cookie_ratelimiter = RateLimiter(max_entries=128)
    mac1_key = crypto.hash(LABEL_MAC1, b.device.public_key)
    rng = random.Random(3)
    flood = [(m, (str(ipaddress.IPv4Address(0x0A800000 + i)), 1)) for i, m in
             enumerate(_random_initiations(5000, rng, mac1_key))]
    b.device.receive(flood, net.now, net.wall)
    net.pump()
    assert len(b.device.cookie_ratelimiter) <= 128
    assert len(net.sent("b", COOKIE)) <= 128 * 5
    assert total_drops(b.device) >= 5000
    ping(net, a, b, b"alive")
    net.run_until(net.now + 1)
    assert b.delivered[-1] == udp4("10.0.0.1", "10.0.0.2", b"alive")


def test_cookie_dance_still_completes_under_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine initiator under a flood gets its cookie, retries with mac2, and gets through."""
    net = SimNetwork()
    a, b = pair(net, Tunables(under_load_handshakes=1))
    assert b.device.public_key is not None
    mac1_key = crypto.hash(LABEL_MAC1, b.device.public_key)
    rng = random.Random(4)
    packet = ping(net, a, b, b"through the flood")
    for step in range(60):
        spoofed = [(m, (str(ipaddress.IPv4Address(0xCB007100 + rng.getrandbits(8))), 9)) for m in
                   _random_initiations(20, rng, mac1_key)]
        b.device.receive(spoofed, net.now, net.wall)
        net.pump()
        net.run_until(0.1 * (step + 1))
    assert packet in b.delivered
    assert a.device.stats.cookie_replies_received >= 1


# --- secrets -----------------------------------------------------------------------------------------------------


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)[2:-1],
            str(list(secret))[1:-1]]


def _assert_no_secret(text: str, secrets: list[bytes], what: str) -> None:
    for secret in secrets:
        for form in _forms(secret):
            for i in range(0, len(form) - 15):
                assert form[i : i + 16] not in text, f"{what} shows key material: {text[:200]!r}"


def test_reprs_and_errors_hold_no_private_or_preshared_key() -> None:
    net = SimNetwork()
    a, b = pair(net, psk=PSK)
    ping(net, a, b, b"x")
    net.run_until(1)
    peer_a = peer_of(b, a)
    peer_b = peer_of(a, b)
    # Leave a handshake in flight too: a initiates again once its session is old, and b does not hear it.
    for node in (a, b):
        node.device.events = []
    b.online = False
    net.now = 130
    ping(net, a, b, b"rekey")
    net.run_until(131)
    assert peer_b.handshake is not None
    assert a.device.private_key is not None and b.device.private_key is not None
    secrets = [a.device.private_key, b.device.private_key, PSK]
    objects: list[object] = [a.device, b.device, peer_a, peer_b, a.device.local, b.device.local, peer_a.remote,
                             peer_b.remote, peer_a.cookie, b.device.cookie_checker, a.device.stats, peer_b.handshake,
                             *peer_a.keypairs(), *peer_b.keypairs(), a.device.local and a.device.local.key,
                             *a.device.take_events(), *b.device.take_events()]
    for obj in objects:
        _assert_no_secret(repr(obj), secrets, type(obj).__name__)
        _assert_no_secret(str(obj), secrets, type(obj).__name__)

    private = b.device.private_key
    errors: list[Exception] = []
    calls = [
        lambda: Device().set_private_key(private[:31], 0),
        lambda: Device().set_private_key(private + b"\0", 0),
        lambda: b.device.set_preshared_key(peer_a, PSK[:31]),
        lambda: b.device.add_peer(private[:31], 0),
        lambda: keys.from_base64(keys.to_base64(private)[:-2] + "!="),
        lambda: keys.from_base64(keys.to_base64(private)[1:]),
        lambda: keys.from_hex(private.hex()[:-1] + "g"),
        lambda: keys.from_hex(private.hex() + "0"),
        lambda: parse_request("set=1", [f"private_key={private.hex()[:-1]}x"]),
        lambda: parse_request("set=1", [f"private_key={private.hex()}", f"private_key={private.hex()}0"]),
        lambda: parse_request("set=1", [f"public_key={peer_a.public_key.hex()}", f"preshared_key={PSK.hex()}z"]),
        lambda: parse_request("set=1", [f"private_key={private.hex()}", "listen_port=99999"]),
    ]
    for call in calls:
        with pytest.raises((ValueError, UapiError)) as info:
            call()
        errors.append(info.value)
    for error in errors:
        _assert_no_secret(str(error), secrets, f"{type(error).__name__} message")
        _assert_no_secret(repr(error), secrets, f"{type(error).__name__} repr")
    # Bad network input never raises at all: it is dropped and counted.
    rng = random.Random(9)
    junk = [(rng.randbytes(rng.randrange(0, 200)), ("203.0.113.1", 1)) for _ in range(500)]
    junk += [(bytes([t, 0, 0, 0]) + rng.randbytes(n - 4), ("203.0.113.1", 1))
             for t, n in ((1, 148), (2, 92), (3, 64), (4, 32), (4, 48)) for _ in range(50)]
    before = total_drops(b.device)
    b.device.receive(junk, net.now, net.wall)
    assert total_drops(b.device) - before == len(junk)


def test_wall_clock_is_only_an_input() -> None:
    """The replay defence for initiations rests on TAI64N from ``wall``: a replay is refused even when the
    responder's own clock went backwards (nothing here reads a clock)."""
    net = SimNetwork()
    a, b = pair(net)
    capture = Recorder(b)
    ping(net, a, b, b"x")
    net.run_until(1)
    (initiation,) = [d for d in capture.datagrams if d[0][0] == INIT]
    net.log.clear()
    b.device.receive([initiation], net.now + 5, WALL_EPOCH - 10_000)
    net.pump()
    assert b.device.stats.drops[DropReason.STALE_TIMESTAMP] == 1
    assert net.sent("b") == []
