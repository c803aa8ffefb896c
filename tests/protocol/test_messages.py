"""Wire formats: exact layout against the vectors, and parse's total rejection of anything malformed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import load_vector
from wgpy.protocol.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    INITIATION_SIZE,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    RESPONSE_SIZE,
    TRANSPORT_HEADER,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
    CookieReply,
    Initiation,
    MessageType,
    Response,
    mac_offsets,
    message_type,
)

DET: Any = load_vector("handshake-deterministic.json")
CASE = DET["cases"][0]
INITIATION = bytes.fromhex(CASE["initiation"]["bytes"])
RESPONSE = bytes.fromhex(CASE["response"]["bytes"])
COOKIE_REPLY = bytes.fromhex(DET["cookie"]["cookie_reply"]["bytes"])

PARSERS: list[tuple[type[Initiation] | type[Response] | type[CookieReply], bytes]] = [
    (Initiation, INITIATION),
    (Response, RESPONSE),
    (CookieReply, COOKIE_REPLY),
]


def test_sizes_and_offsets() -> None:
    assert (INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE) == (148, 92, 64)
    assert (TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE) == (16, 32)
    assert (INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET) == (116, 132)
    assert (RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET) == (60, 76)
    assert mac_offsets(148) == (116, 132) and mac_offsets(92) == (60, 76)
    assert mac_offsets(64) is None and mac_offsets(0) is None
    assert [int(t) for t in MessageType] == [1, 2, 3, 4]


def test_initiation_fields() -> None:
    msg = Initiation.parse(INITIATION)
    assert msg is not None
    f = CASE["initiation"]["fields"]
    assert msg.sender == CASE["initiator"]["sender_index"]
    assert msg.sender.to_bytes(4, "little").hex() == f["sender_index_le32"]
    assert msg.ephemeral.hex() == f["unencrypted_ephemeral"]
    assert msg.encrypted_static.hex() == f["encrypted_static"]
    assert msg.encrypted_timestamp.hex() == f["encrypted_timestamp"]
    assert msg.mac1.hex() == f["mac1"] and msg.mac2.hex() == f["mac2"]
    assert msg.to_bytes() == INITIATION
    assert INITIATION[INITIATION_MAC1_OFFSET : INITIATION_MAC1_OFFSET + 16] == msg.mac1


def test_response_fields() -> None:
    msg = Response.parse(RESPONSE)
    assert msg is not None
    f = CASE["response"]["fields"]
    assert msg.sender == CASE["responder"]["sender_index"]
    assert msg.receiver == CASE["initiator"]["sender_index"]
    assert msg.ephemeral.hex() == f["unencrypted_ephemeral"]
    assert msg.encrypted_nothing.hex() == f["encrypted_nothing"]
    assert msg.mac1.hex() == f["mac1"] and msg.mac2.hex() == f["mac2"]
    assert msg.to_bytes() == RESPONSE
    assert RESPONSE[RESPONSE_MAC1_OFFSET : RESPONSE_MAC1_OFFSET + 16] == msg.mac1


def test_cookie_reply_fields() -> None:
    msg = CookieReply.parse(COOKIE_REPLY)
    assert msg is not None
    f = DET["cookie"]["cookie_reply"]["fields"]
    assert msg.receiver.to_bytes(4, "little").hex() == f["receiver_index_le32"]
    assert msg.nonce.hex() == f["nonce"]
    assert msg.encrypted_cookie.hex() == f["encrypted_cookie"]
    assert msg.to_bytes() == COOKIE_REPLY


@pytest.mark.parametrize(("cls", "good"), PARSERS, ids=["initiation", "response", "cookie"])
def test_parse_accepts_bytes_bytearray_memoryview(cls: Any, good: bytes) -> None:
    expected = cls.parse(good)
    assert expected is not None
    assert cls.parse(bytearray(good)) == expected
    assert cls.parse(memoryview(good)) == expected
    # A view into a larger buffer (as a receive batch would give) parses the same.
    assert cls.parse(memoryview(b"xx" + good + b"yy")[2:-2]) == expected


@pytest.mark.parametrize(("cls", "good"), PARSERS, ids=["initiation", "response", "cookie"])
def test_parse_rejects_every_wrong_length(cls: Any, good: bytes) -> None:
    for n in range(0, 300):
        if n == len(good):
            continue
        data = (good * 5)[:n]
        assert cls.parse(data) is None, n


@pytest.mark.parametrize(("cls", "good"), PARSERS, ids=["initiation", "response", "cookie"])
def test_parse_rejects_wrong_type_and_reserved(cls: Any, good: bytes) -> None:
    for t in range(256):
        data = bytes([t]) + good[1:]
        assert (cls.parse(data) is not None) == (t == good[0])
    for pos in (1, 2, 3):
        for value in (1, 0x80, 0xFF):
            bad = bytearray(good)
            bad[pos] = value
            assert cls.parse(bytes(bad)) is None


def test_parsers_reject_each_others_messages() -> None:
    # Same-length confusion is impossible (sizes differ) but a retyped message must not pass either.
    assert Response.parse(INITIATION) is None
    assert Initiation.parse(RESPONSE) is None
    assert CookieReply.parse(INITIATION[:64]) is None


@given(st.binary(max_size=200))
def test_parse_never_raises(data: bytes) -> None:
    for cls in (Initiation, Response, CookieReply):
        assert cls.parse(data) is None or len(data) == {Initiation: 148, Response: 92, CookieReply: 64}[cls]
        cls.parse(memoryview(data))
    t = message_type(data)
    assert t is None or (1 <= t <= 4 and data[1:4] == b"\0\0\0" and data[0] == t)


@given(st.sampled_from([148, 92, 64]), st.binary(min_size=148, max_size=148))
def test_parse_of_right_length_and_header(size: int, body: bytes) -> None:
    t = {148: 1, 92: 2, 64: 3}[size]
    data = bytes([t, 0, 0, 0]) + body[: size - 4]
    cls: Any = {148: Initiation, 92: Response, 64: CookieReply}[size]
    msg = cls.parse(data)
    assert msg is not None
    assert msg.to_bytes() == data


def test_message_type() -> None:
    assert message_type(INITIATION) == MessageType.INITIATION
    assert message_type(RESPONSE) == MessageType.RESPONSE
    assert message_type(COOKIE_REPLY) == MessageType.COOKIE_REPLY
    transport = bytes.fromhex(CASE["transport"][0]["bytes"])
    assert message_type(transport) == MessageType.TRANSPORT
    assert message_type(memoryview(transport)) == 4
    for bad in (b"", b"\x01", b"\x01\0\0", b"\0\0\0\0", b"\x05\0\0\0", b"\x01\0\0\x01", b"\x04\x01\0\0"):
        assert message_type(bad) is None


def test_transport_header() -> None:
    for entry in CASE["transport"]:
        data = bytes.fromhex(entry["bytes"])
        word, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
        assert word == MessageType.TRANSPORT
        assert receiver == entry["receiver_index"]
        assert counter == entry["counter"]
        assert len(data) >= TRANSPORT_MIN_SIZE
        assert TRANSPORT_HEADER.pack(4, receiver, counter) == data[:TRANSPORT_HEADER_SIZE]


def test_to_bytes_refuses_wrong_field_sizes() -> None:
    msg = Initiation.parse(INITIATION)
    assert msg is not None
    bad = dataclasses.replace(msg, ephemeral=msg.ephemeral[:31])
    with pytest.raises(ValueError):
        bad.to_bytes()
    with pytest.raises(ValueError):
        Response(1, 2, bytes(32), bytes(16), bytes(16), bytes(17)).to_bytes()
    with pytest.raises(ValueError):
        CookieReply(1, bytes(12), bytes(32)).to_bytes()
