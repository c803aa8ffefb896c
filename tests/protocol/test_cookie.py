"""mac1, mac2 and cookie replies: the vectors' cookie sections byte for byte, rotation, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import load_vector
from tests.protocol.vectors_util import Parties, ScriptedRandom, x
from wgpy.protocol import crypto
from wgpy.protocol.constants import COOKIE_REFRESH_TIME
from wgpy.protocol.cookie import (
    COOKIE_SECRET_LATENCY,
    CookieChecker,
    CookieGenerator,
    endpoint_source_bytes,
)
from wgpy.protocol.messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC2_OFFSET,
    TRANSPORT_HEADER,
    CookieReply,
    Response,
)
from wgpy.protocol.noise import LocalStatic, consume_response, create_initiation

DET: Any = load_vector("handshake-deterministic.json")
LIVE: Any = load_vector("handshake-wireguard-go.json")
CASE = DET["cases"][0]
COOKIE = DET["cookie"]
assert COOKIE["based_on_case"] == CASE["name"]
INITIATION = x(CASE["initiation"]["bytes"])
RESPONSE = x(CASE["response"]["bytes"])
SOURCE = x(COOKIE["source_bytes"])


def parse_reply(data: bytes) -> CookieReply:
    reply = CookieReply.parse(data)
    assert reply is not None
    return reply


def mac2_of(message: bytes | bytearray) -> bytes:
    return bytes(message[INITIATION_MAC2_OFFSET:])


def test_endpoint_source_bytes() -> None:
    assert endpoint_source_bytes(COOKIE["source_ip"], COOKIE["source_port"]) == SOURCE
    assert endpoint_source_bytes("fd00::1", 1) == bytes.fromhex("fd00" + "00" * 13 + "01") + b"\x00\x01"
    assert endpoint_source_bytes("127.0.0.1", 0x1234)[-2:] == b"\x12\x34"  # big-endian, unlike wireguard-go
    with pytest.raises(ValueError):
        endpoint_source_bytes("not-an-ip", 1)


# --- the deterministic cookie vector ------------------------------------------------------------------------


def test_vector_cookie_reply_and_mac2() -> None:
    p = Parties.from_case(CASE)
    rng = ScriptedRandom(x(COOKIE["cookie_secret"]), x(COOKIE["nonce24"]))
    checker = CookieChecker(p.responder, rng)
    assert checker.check_mac1(INITIATION)
    assert not checker.check_mac2(INITIATION, SOURCE, 0.0)  # no secret yet

    reply = checker.create_reply(INITIATION, CASE["initiator"]["sender_index"], SOURCE, 10.0)
    assert rng.calls == [32, 24]  # the secret, then the nonce
    assert reply.hex() == COOKIE["cookie_reply"]["bytes"]
    assert crypto.mac(x(COOKIE["cookie_secret"]), SOURCE).hex() == COOKIE["cookie"]
    assert p.responder.cookie_key.hex() == COOKIE["cookie_encryption_key"]
    assert INITIATION[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET].hex() == COOKIE["ad_mac1"]

    # The initiator: it sent this initiation (so remembers its mac1), accepts the reply and adds mac2.
    generator = CookieGenerator(p.responder_peer)
    message = bytearray(INITIATION)
    message[INITIATION_MAC1_OFFSET:] = bytes(32)
    generator.add_macs(message, 10.0)
    assert bytes(message) == INITIATION
    assert not generator.has_cookie(10.0)
    assert generator.consume_reply(parse_reply(reply), 10.1)
    assert generator.has_cookie(10.1)
    generator.add_macs(message, 10.2)
    assert bytes(message).hex() == COOKIE["initiation_with_mac2"]["bytes"]
    assert mac2_of(message).hex() == COOKIE["initiation_with_mac2"]["mac2"]
    assert checker.check_mac1(message)
    assert checker.check_mac2(message, SOURCE, 10.2)
    assert not checker.check_mac2(message, endpoint_source_bytes("192.0.2.10", 51821), 10.2)

    # A fresh initiation made while holding the cookie carries a valid mac2 too.
    second = COOKIE["second_initiation_with_mac2"]
    fresh, _ = create_initiation(
        p.initiator,
        p.responder_peer,
        x(second["ephemeral_private"]),
        second["sender_index"],
        x(second["timestamp_tai64n"]),
    )
    generator.add_macs(fresh, 11.0)
    assert bytes(fresh).hex() == second["bytes"]
    assert bytes(fresh[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET]).hex() == second["mac1"]
    assert mac2_of(fresh).hex() == second["mac2"]
    assert checker.check_mac2(fresh, SOURCE, 11.0)


# --- the live wireguard-go cookie exchange ------------------------------------------------------------------


def live_parties() -> Parties:
    return Parties.from_keys(
        x(LIVE["initiator_static_private"]),
        x(CASE["responder"]["static_private"]),
        x(LIVE["preshared_key"]),
    )


def test_wireguard_go_first_burst_cookie_reply() -> None:
    ex = LIVE["cookie_exchange"]
    p = live_parties()
    assert p.responder_peer.cookie_key.hex() == ex["cookie_encryption_key"]
    generator = CookieGenerator(p.responder_peer)
    message = bytearray(x(LIVE["initiation"]))
    generator.add_macs(message, 0.0)
    assert bytes(message).hex() == LIVE["initiation"]
    assert bytes(message[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET]).hex() == ex[
        "first_burst_cookie_reply_ad_mac1"
    ]
    reply = parse_reply(x(ex["first_burst_cookie_reply"]))
    assert reply.receiver == LIVE["initiator_sender_index"]
    assert generator.consume_reply(reply, 0.0)
    generator.add_macs(message, 0.0)
    assert mac2_of(message) == crypto.mac(x(ex["cookie"]), bytes(message[:INITIATION_MAC2_OFFSET]))


def test_wireguard_go_cookie_exchange() -> None:
    ex = LIVE["cookie_exchange"]
    p = live_parties()
    generator = CookieGenerator(p.responder_peer)
    message, state = create_initiation(
        p.initiator,
        p.responder_peer,
        x(LIVE["initiator_ephemeral_private"]),
        ex["initiation2_sender_index"],
        x(ex["initiation2_timestamp_tai64n"]),
    )
    generator.add_macs(message, 100.0)
    assert bytes(message).hex() == ex["initiation2_without_mac2"]

    reply = parse_reply(x(ex["cookie_reply_for_initiation2"]))
    assert reply.receiver == ex["initiation2_sender_index"]
    assert generator.consume_reply(reply, 100.001)
    generator.add_macs(message, 100.002)
    assert bytes(message).hex() == ex["initiation2_with_mac2"]

    response = Response.parse(x(ex["response2"]))
    assert response is not None
    assert response.sender == ex["responder2_sender_index"]
    keys = consume_response(p.initiator, p.responder_peer, state, response)
    assert keys is not None
    assert keys.send_key.hex() == ex["transport_keys2"]["initiator_send"]
    assert keys.receive_key.hex() == ex["transport_keys2"]["initiator_recv"]

    # The ping over the cookie-earned session: our request opens with our send key, and the reply with our
    # receive key into an IPv4 packet from the peer's tunnel address.
    request = x(ex["ping3_request_bytes"])
    assert TRANSPORT_HEADER.unpack_from(request) == (4, keys.remote_index, 0)
    assert crypto.aead_decrypt(keys.send_key, 0, request[16:], b"")[:1] == b"\x45"
    reply_data = x(ex["ping3_reply_bytes"])
    assert TRANSPORT_HEADER.unpack_from(reply_data) == (4, keys.local_index, 0)
    inner = crypto.aead_decrypt(keys.receive_key, 0, reply_data[16:], b"")
    assert inner[0] == 0x45 and inner[12:16] == bytes([10, 232, 0, 2])

    # wireguard-go answered the mac2-less copy again afterwards; the mac1 is the same, so it is accepted once.
    generator.add_macs(message, 100.003)
    assert generator.consume_reply(parse_reply(x(ex["cookie_reply_after_response"])), 100.004)


# --- checker rules ------------------------------------------------------------------------------------------


def test_check_mac1() -> None:
    p = Parties.from_case(CASE)
    responder = CookieChecker(p.responder, ScriptedRandom())
    initiator = CookieChecker(p.initiator, ScriptedRandom())
    assert responder.check_mac1(INITIATION) and responder.check_mac1(memoryview(INITIATION))
    assert initiator.check_mac1(RESPONSE) and initiator.check_mac1(bytearray(RESPONSE))
    assert not initiator.check_mac1(INITIATION)  # addressed to the responder, not to us
    assert not responder.check_mac1(RESPONSE)
    for pos in (0, 4, 8, 100, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET - 1):
        bad = bytearray(INITIATION)
        bad[pos] ^= 0x01
        assert not responder.check_mac1(bad), pos
    # mac2 is not covered by mac1.
    bad = bytearray(INITIATION)
    bad[INITIATION_MAC2_OFFSET] ^= 1
    assert responder.check_mac1(bad)
    assert not responder.check_mac1(INITIATION[:-1])
    assert not responder.check_mac1(b"")
    assert not responder.check_mac1(bytes([2]) + INITIATION[1:])
    # A checker without a key accepts nothing; set_local follows key changes.
    responder.set_local(None)
    assert not responder.check_mac1(INITIATION)
    responder.set_local(p.responder)
    assert responder.check_mac1(INITIATION)


def test_cookie_secret_rotates_after_refresh() -> None:
    p = Parties.from_case(CASE)
    secret_a, secret_b = b"A" * 32, b"B" * 32
    rng = ScriptedRandom(secret_a, b"n" * 24, b"m" * 24, secret_b, b"o" * 24)
    refresh = 30.0
    checker = CookieChecker(p.responder, rng, refresh=refresh)
    generator = CookieGenerator(p.responder_peer)
    message = bytearray(INITIATION)
    generator.add_macs(message, 0.0)
    assert generator.consume_reply(parse_reply(checker.create_reply(message, 1, SOURCE, 0.0)), 0.0)
    generator.add_macs(message, 1.0)
    assert checker.check_mac2(message, SOURCE, 1.0)
    assert checker.check_mac2(message, SOURCE, refresh)

    # Within `refresh` the same secret answers again (no new secret drawn, only a nonce).
    checker.create_reply(message, 1, SOURCE, refresh - 1)
    assert rng.calls == [32, 24, 24]
    # After `refresh` seconds the old cookie's mac2 is dead, before and after the secret is renewed.
    assert not checker.check_mac2(message, SOURCE, refresh + 0.5)
    fresh_reply = checker.create_reply(message, 1, SOURCE, refresh + 0.5)
    assert rng.calls == [32, 24, 24, 32, 24]
    assert not checker.check_mac2(message, SOURCE, refresh + 0.5)
    # The new cookie works again.
    generator.add_macs(message, refresh + 0.5)
    assert generator.consume_reply(parse_reply(fresh_reply), refresh + 0.5)
    generator.add_macs(message, refresh + 0.6)
    assert checker.check_mac2(message, SOURCE, refresh + 0.6)


def test_generator_stops_using_an_old_cookie() -> None:
    p = Parties.from_case(CASE)
    checker = CookieChecker(p.responder, ScriptedRandom(b"S" * 32, b"n" * 24))
    generator = CookieGenerator(p.responder_peer)
    message = bytearray(INITIATION)
    generator.add_macs(message, 0.0)
    assert generator.consume_reply(parse_reply(checker.create_reply(message, 1, SOURCE, 0.0)), 0.0)
    limit = COOKIE_REFRESH_TIME - COOKIE_SECRET_LATENCY
    generator.add_macs(message, limit - 0.1)
    assert mac2_of(message) != bytes(16)
    generator.add_macs(message, limit + 0.1)
    assert mac2_of(message) == bytes(16)
    assert not generator.has_cookie(limit + 0.1)


def test_response_mac2() -> None:
    # The initiator also checks mac2 on responses sent to it under load: offsets follow the length.
    p = Parties.from_case(CASE)
    checker = CookieChecker(p.initiator, ScriptedRandom(b"R" * 32, b"q" * 24))
    generator = CookieGenerator(p.initiator_peer)
    response = bytearray(RESPONSE)
    generator.add_macs(response, 0.0)
    assert bytes(response) == RESPONSE
    assert generator.consume_reply(parse_reply(checker.create_reply(response, 7, SOURCE, 0.0)), 0.0)
    generator.add_macs(response, 0.0)
    assert bytes(response[RESPONSE_MAC2_OFFSET:]) != bytes(16)
    assert checker.check_mac1(response)
    assert checker.check_mac2(response, SOURCE, 0.0)


# --- generator refusals -------------------------------------------------------------------------------------


def test_reply_for_a_mac1_we_did_not_send_is_rejected() -> None:
    p = Parties.from_case(CASE)
    reply = parse_reply(x(COOKIE["cookie_reply"]["bytes"]))  # answers the vector initiation's mac1

    never_sent = CookieGenerator(p.responder_peer)
    assert not never_sent.consume_reply(reply, 0.0)

    other = CookieGenerator(p.responder_peer)
    second = COOKIE["second_initiation_with_mac2"]
    message, _ = create_initiation(
        p.initiator,
        p.responder_peer,
        x(second["ephemeral_private"]),
        second["sender_index"],
        x(second["timestamp_tai64n"]),
    )
    other.add_macs(message, 0.0)  # last mac1 is now the second initiation's
    assert not other.consume_reply(reply, 0.0)
    assert mac2_of(message) == bytes(16)


def test_reply_accepted_once_and_tampering_rejected() -> None:
    p = Parties.from_case(CASE)
    reply_bytes = x(COOKIE["cookie_reply"]["bytes"])
    generator = CookieGenerator(p.responder_peer)
    message = bytearray(INITIATION)
    generator.add_macs(message, 0.0)
    for pos in (8, 31, 40, 63):
        bad = bytearray(reply_bytes)
        bad[pos] ^= 0x20
        assert not generator.consume_reply(parse_reply(bytes(bad)), 0.0), pos
    assert generator.consume_reply(parse_reply(reply_bytes), 0.0)
    # A replayed copy must not refresh the cookie's age.
    assert not generator.consume_reply(parse_reply(reply_bytes), 50.0)
    limit = COOKIE_REFRESH_TIME - COOKIE_SECRET_LATENCY
    assert not generator.has_cookie(limit + 1.0)


def test_reply_from_another_responder_rejected() -> None:
    p = Parties.from_case(CASE)
    impostor = LocalStatic.from_private(crypto.clamp(bytes(range(32))))
    checker = CookieChecker(impostor, ScriptedRandom(b"I" * 32, b"i" * 24))
    generator = CookieGenerator(p.responder_peer)
    message = bytearray(INITIATION)
    generator.add_macs(message, 0.0)
    forged = checker.create_reply(message, 1, SOURCE, 0.0)
    assert not generator.consume_reply(parse_reply(forged), 0.0)


def test_create_reply_needs_a_key_and_a_handshake_message() -> None:
    checker = CookieChecker(None, ScriptedRandom())
    with pytest.raises(ValueError):
        checker.create_reply(INITIATION, 1, SOURCE, 0.0)
    p = Parties.from_case(CASE)
    checker.set_local(p.responder)
    with pytest.raises(ValueError):
        checker.create_reply(INITIATION[:100], 1, SOURCE, 0.0)
    with pytest.raises(ValueError):
        CookieGenerator(p.responder_peer).add_macs(bytearray(100), 0.0)


def test_reprs_hold_no_secrets() -> None:
    p = Parties.from_case(CASE)
    checker = CookieChecker(p.responder, ScriptedRandom(b"Z" * 32, b"z" * 24))
    reply = checker.create_reply(INITIATION, 1, SOURCE, 0.0)
    generator = CookieGenerator(p.responder_peer)
    generator.add_macs(bytearray(INITIATION), 0.0)
    assert generator.consume_reply(parse_reply(reply), 0.0)
    cookie = crypto.mac(b"Z" * 32, SOURCE)
    for text in (repr(checker), repr(generator)):
        assert "ZZZZ" not in text and cookie.hex() not in text and repr(cookie) not in text


@given(st.binary(max_size=200), st.floats(allow_nan=False, allow_infinity=False))
def test_checks_never_raise(data: bytes, now: float) -> None:
    checker = CookieChecker(PARTIES.responder, ScriptedRandom())
    assert isinstance(checker.check_mac1(data), bool)
    assert checker.check_mac2(data, SOURCE, now) is False


PARTIES = Parties.from_case(CASE)
