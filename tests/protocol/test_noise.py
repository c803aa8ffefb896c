"""Noise_IKpsk2 as WireGuard uses it: byte-exact against the deterministic and wireguard-go vectors, key-exact
against the noiseprotocol package, and silent (None) on every kind of bad input."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from tests.conftest import load_vector
from tests.protocol.vectors_util import Parties, x
from wgpy.protocol import crypto
from wgpy.protocol.constants import IDENTIFIER
from wgpy.protocol.cookie import CookieGenerator
from wgpy.protocol.crypto import CryptoError, aead_decrypt, aead_encrypt
from wgpy.protocol.messages import (
    INITIATION_MAC1_OFFSET,
    RESPONSE_MAC1_OFFSET,
    TRANSPORT_HEADER,
    Initiation,
    MessageType,
    Response,
)
from wgpy.protocol.noise import (
    InitiatorState,
    LocalStatic,
    RemoteStatic,
    ResponderState,
    SessionKeys,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wgpy.protocol.tai64n import tai64n

DET: Any = load_vector("handshake-deterministic.json")
LIVE: Any = load_vector("handshake-wireguard-go.json")
CASES = DET["cases"]
CASE_IDS = [c["name"].split()[0] for c in CASES]


def initiate(case: dict[str, Any], p: Parties) -> tuple[bytearray, InitiatorState]:
    i = case["initiator"]
    return create_initiation(
        p.initiator,
        p.responder_peer,
        x(i["ephemeral_private"]),
        i["sender_index"],
        x(case["timestamp_tai64n"]),
    )


def full_handshake(
    case: dict[str, Any],
) -> tuple[Parties, bytearray, InitiatorState, ResponderState, bytearray, SessionKeys, SessionKeys]:
    p = Parties.from_case(case)
    init_msg, i_state = initiate(case, p)
    CookieGenerator(p.responder_peer).add_macs(init_msg, 0.0)
    parsed = Initiation.parse(init_msg)
    assert parsed is not None
    r_state = consume_initiation(p.responder, parsed, p.lookup)
    assert r_state is not None
    responder_state_copy = dataclasses.replace(r_state)
    r = case["responder"]
    resp_msg, r_keys = create_response(
        p.responder, p.initiator_peer, r_state, x(r["ephemeral_private"]), r["sender_index"]
    )
    CookieGenerator(p.initiator_peer).add_macs(resp_msg, 0.0)
    parsed_resp = Response.parse(resp_msg)
    assert parsed_resp is not None
    i_state_copy = dataclasses.replace(i_state)
    i_keys = consume_response(p.initiator, p.responder_peer, i_state, parsed_resp)
    assert i_keys is not None
    return p, init_msg, i_state_copy, responder_state_copy, resp_msg, i_keys, r_keys


# --- the deterministic vector -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_precomputed_statics(case: dict[str, Any]) -> None:
    p = Parties.from_case(case)
    assert p.initiator.public_key.hex() == case["initiator"]["static_public"]
    assert p.responder.public_key.hex() == case["responder"]["static_public"]
    assert p.responder_peer.mac1_key.hex() == case["mac1_key_initiation"]
    assert p.responder.mac1_key.hex() == case["mac1_key_initiation"]
    assert p.initiator_peer.mac1_key.hex() == case["mac1_key_response"]
    assert p.initiator.mac1_key.hex() == case["mac1_key_response"]
    assert p.responder.cookie_key.hex() == case["cookie_key_responder"]
    assert p.responder_peer.cookie_key.hex() == case["cookie_key_responder"]
    assert p.responder_peer.static_static is not None
    assert p.responder_peer.static_static.hex() == case["dh"]["dh_Si_Sr"]
    assert p.initiator_peer.static_static == p.responder_peer.static_static
    assert p.responder.hash0.hex() == case["intermediate"]["hash_after_responder_static"]
    assert p.responder_peer.hash0 == p.responder.hash0
    assert p.initiator_peer.preshared_key == p.responder_peer.preshared_key == x(case["preshared_key"])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_deterministic_handshake(case: dict[str, Any]) -> None:
    p, init_msg, i_state, r_state, resp_msg, i_keys, r_keys = full_handshake(case)
    inter = case["intermediate"]

    assert bytes(init_msg).hex() == case["initiation"]["bytes"]
    assert i_state.chaining_key.hex() == inter["chaining_key_after_initiation"]
    assert i_state.hash.hex() == inter["hash_after_initiation"]
    assert i_state.sender_index == case["initiator"]["sender_index"]

    # The responder recovers who initiated, when, and under which index.
    assert r_state.remote_static_public == p.initiator.public_key
    assert r_state.timestamp.hex() == case["timestamp_tai64n"]
    assert r_state.remote_index == case["initiator"]["sender_index"]
    assert r_state.remote_ephemeral.hex() == case["initiator"]["ephemeral_public"]
    assert r_state.chaining_key.hex() == inter["chaining_key_after_initiation"]
    assert r_state.hash.hex() == inter["hash_after_initiation"]

    assert bytes(resp_msg).hex() == case["response"]["bytes"]

    keys = case["transport_keys"]
    assert i_keys.send_key.hex() == keys["initiator_send"]
    assert i_keys.receive_key.hex() == keys["initiator_recv"]
    assert r_keys.send_key.hex() == keys["responder_send"]
    assert r_keys.receive_key.hex() == keys["responder_recv"]
    assert (i_keys.local_index, i_keys.remote_index, i_keys.is_initiator) == (
        case["initiator"]["sender_index"],
        case["responder"]["sender_index"],
        True,
    )
    assert (r_keys.local_index, r_keys.remote_index, r_keys.is_initiator) == (
        case["responder"]["sender_index"],
        case["initiator"]["sender_index"],
        False,
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_deterministic_transport(case: dict[str, Any]) -> None:
    _, _, _, _, _, i_keys, r_keys = full_handshake(case)
    for entry in case["transport"]:
        key = i_keys.send_key if entry["direction"] == "i2r" else r_keys.send_key
        assert key.hex() == entry["key"]
        padded = x(entry["padded_plaintext"])
        assert len(padded) % 16 == 0 and padded.startswith(x(entry["plaintext"]))
        header = TRANSPORT_HEADER.pack(MessageType.TRANSPORT, entry["receiver_index"], entry["counter"])
        data = header + aead_encrypt(key, entry["counter"], padded, b"")
        assert data.hex() == entry["bytes"]
        assert crypto.nonce(entry["counter"]).hex() == entry["nonce12"]
        # And the other side opens it with its receive key.
        receive = r_keys.receive_key if entry["direction"] == "i2r" else i_keys.receive_key
        assert aead_decrypt(receive, entry["counter"], data[16:], b"") == padded


# --- the live wireguard-go vector ---------------------------------------------------------------------------


def live_parties() -> Parties:
    responder_private = x(CASES[0]["responder"]["static_private"])
    p = Parties.from_keys(x(LIVE["initiator_static_private"]), responder_private, x(LIVE["preshared_key"]))
    assert p.initiator.public_key.hex() == LIVE["initiator_static_public"]
    assert p.responder.public_key.hex() == LIVE["responder_static_public"]
    return p


def test_wireguard_go_initiation_rebuilds_and_is_accepted() -> None:
    p = live_parties()
    msg, _ = create_initiation(
        p.initiator,
        p.responder_peer,
        x(LIVE["initiator_ephemeral_private"]),
        LIVE["initiator_sender_index"],
        x(LIVE["timestamp_tai64n"]),
    )
    CookieGenerator(p.responder_peer).add_macs(msg, 0.0)
    assert bytes(msg).hex() == LIVE["initiation"]
    parsed = Initiation.parse(x(LIVE["initiation"]))
    assert parsed is not None
    state = consume_initiation(p.responder, parsed, p.lookup)
    assert state is not None
    assert state.remote_static_public == p.initiator.public_key
    assert state.timestamp.hex() == LIVE["timestamp_tai64n"]
    assert state.remote_index == LIVE["initiator_sender_index"]


def test_wireguard_go_response_and_exchanges() -> None:
    p = live_parties()
    _, state = create_initiation(
        p.initiator,
        p.responder_peer,
        x(LIVE["initiator_ephemeral_private"]),
        LIVE["initiator_sender_index"],
        x(LIVE["timestamp_tai64n"]),
    )
    response = Response.parse(x(LIVE["response"]))
    assert response is not None
    assert response.sender == LIVE["responder_sender_index"]
    keys = consume_response(p.initiator, p.responder_peer, state, response)
    assert keys is not None
    assert keys.send_key.hex() == LIVE["transport_keys"]["initiator_send"]
    assert keys.receive_key.hex() == LIVE["transport_keys"]["initiator_recv"]
    assert keys.remote_index == LIVE["responder_sender_index"]

    for ex in LIVE["exchanges"]:
        plain = x(ex["request_plaintext"])
        padded = plain + bytes(-len(plain) % 16)
        header = TRANSPORT_HEADER.pack(4, keys.remote_index, ex["request_counter"])
        assert (header + aead_encrypt(keys.send_key, ex["request_counter"], padded, b"")).hex() == ex[
            "request_bytes"
        ]
        reply = x(ex["reply_bytes"])
        word, receiver, counter = TRANSPORT_HEADER.unpack_from(reply)
        assert (word, receiver, counter) == (4, keys.local_index, ex["reply_counter"])
        inner = aead_decrypt(keys.receive_key, counter, reply[16:], b"")
        assert inner.hex() == ex["reply_padded_plaintext"]
        assert int.from_bytes(inner[2:4], "big") == ex["reply_ip_total_length"]
    keepalive = TRANSPORT_HEADER.pack(4, keys.remote_index, 2) + aead_encrypt(keys.send_key, 2, b"", b"")
    assert keepalive.hex() == LIVE["keepalive_sent"]


# --- cross-check with the noiseprotocol package -------------------------------------------------------------

NOISE_NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"


def noise_peer(initiator: bool, static: bytes, ephemeral: bytes, psk: bytes, remote: bytes | None) -> Any:
    conn = NoiseConnection.from_name(NOISE_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(IDENTIFIER)
    conn.set_psks(psk=psk)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    # A preset ephemeral replaces the generated one (HandshakeState.write_message keeps a non-Empty e).
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    conn.start_handshake()
    return conn


keys32 = st.binary(min_size=32, max_size=32)
indices = st.integers(min_value=0, max_value=0xFFFFFFFF)


NOISE_WARNING = "ignore:One of ephemeral keypairs is already set:UserWarning"


@pytest.mark.filterwarnings(NOISE_WARNING)
@settings(max_examples=25, deadline=None)
@given(
    si=keys32.map(crypto.clamp),
    sr=keys32.map(crypto.clamp),
    ei=keys32.map(crypto.clamp),
    er=keys32.map(crypto.clamp),
    psk=keys32,
    index_i=indices,
    index_r=indices,
    wall=st.floats(min_value=0, max_value=2e9),
)
def test_noiseprotocol_initiator_to_our_responder(
    si: bytes, sr: bytes, ei: bytes, er: bytes, psk: bytes, index_i: int, index_r: int, wall: float
) -> None:
    p = Parties.from_keys(si, sr, psk)
    timestamp = tai64n(wall)
    conn = noise_peer(True, si, ei, psk, p.responder.public_key)
    body = bytes(conn.write_message(timestamp))
    assert len(body) == 32 + 48 + 28
    wire = bytearray(148)
    wire[:8] = struct.pack("<II", MessageType.INITIATION, index_i)
    wire[8:116] = body
    CookieGenerator(p.responder_peer).add_macs(wire, 0.0)
    parsed = Initiation.parse(wire)
    assert parsed is not None
    state = consume_initiation(p.responder, parsed, p.lookup)
    assert state is not None
    assert state.timestamp == timestamp and state.remote_static_public == p.initiator.public_key
    resp, r_keys = create_response(p.responder, p.initiator_peer, state, er, index_r)
    assert conn.read_message(bytes(resp[12:RESPONSE_MAC1_OFFSET])) == b""
    assert conn.handshake_finished
    assert r_keys.receive_key == conn.noise_protocol.cipher_state_encrypt.k
    assert r_keys.send_key == conn.noise_protocol.cipher_state_decrypt.k
    # Transport nonces agree too (4 zero bytes + LE64 counter in both).
    sealed = conn.encrypt(b"ping")
    assert aead_decrypt(r_keys.receive_key, 0, sealed, b"") == b"ping"


NOISE_WARNING = "ignore:One of ephemeral keypairs is already set:UserWarning"


@pytest.mark.filterwarnings(NOISE_WARNING)
@settings(max_examples=25, deadline=None)
@given(
    si=keys32.map(crypto.clamp),
    sr=keys32.map(crypto.clamp),
    ei=keys32.map(crypto.clamp),
    er=keys32.map(crypto.clamp),
    psk=keys32,
    index_i=indices,
    index_r=indices,
    timestamp=st.binary(min_size=12, max_size=12),
)
def test_our_initiator_to_noiseprotocol_responder(
    si: bytes, sr: bytes, ei: bytes, er: bytes, psk: bytes, index_i: int, index_r: int, timestamp: bytes
) -> None:
    p = Parties.from_keys(si, sr, psk)
    msg, state = create_initiation(p.initiator, p.responder_peer, ei, index_i, timestamp)
    conn = noise_peer(False, sr, er, psk, None)
    assert conn.read_message(bytes(msg[8:INITIATION_MAC1_OFFSET])) == timestamp
    assert conn.noise_protocol.handshake_state.rs.public_bytes == p.initiator.public_key
    body = bytes(conn.write_message(b""))
    assert len(body) == 48
    wire = Response(index_r, index_i, body[:32], body[32:], bytes(16), bytes(16))
    keys = consume_response(p.initiator, p.responder_peer, state, wire)
    assert keys is not None
    assert keys.send_key == conn.noise_protocol.cipher_state_decrypt.k
    assert keys.receive_key == conn.noise_protocol.cipher_state_encrypt.k
    assert (keys.local_index, keys.remote_index) == (index_i, index_r)


# --- rejection and erasure ----------------------------------------------------------------------------------

CASE = CASES[0]


def fresh_initiation(p: Parties) -> tuple[Initiation, InitiatorState]:
    msg, state = initiate(CASE, p)
    parsed = Initiation.parse(msg)
    assert parsed is not None
    return parsed, state


def test_wrong_responder_static_key_rejects_initiation() -> None:
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    other = LocalStatic.from_private(crypto.clamp(bytes(range(32))))
    other_view = RemoteStatic.create(other, p.initiator.public_key, p.psk)
    assert consume_initiation(other, parsed, lambda _pub: other_view) is None


def test_unknown_initiator_rejected() -> None:
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    seen: list[bytes] = []

    def lookup(pub: bytes) -> RemoteStatic | None:
        seen.append(pub)
        return None

    assert consume_initiation(p.responder, parsed, lookup) is None
    assert seen == [p.initiator.public_key]  # the static decrypted, but nobody is configured with it


def test_peer_with_wrong_static_static_rejected() -> None:
    # lookup returns a RemoteStatic computed for a different local key: the timestamp cannot decrypt.
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    stranger = LocalStatic.from_private(crypto.clamp(bytes(range(1, 33))))
    stale = RemoteStatic.create(stranger, p.initiator.public_key, p.psk)
    assert consume_initiation(p.responder, parsed, lambda _pub: stale) is None


@pytest.mark.parametrize("field", ["ephemeral", "encrypted_static", "encrypted_timestamp"])
@pytest.mark.parametrize("bit", [0, 7, 100])
def test_tampered_initiation_rejected(field: str, bit: int) -> None:
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    value = bytearray(getattr(parsed, field))
    pos = bit // 8 % len(value)
    value[pos] ^= 1 << (bit % 8)
    changes: dict[str, Any] = {field: bytes(value)}
    tampered = dataclasses.replace(parsed, **changes)
    assert consume_initiation(p.responder, tampered, p.lookup) is None


def test_psk_mismatch_rejects_response() -> None:
    p = Parties.from_case(CASE)  # with psk
    parsed, i_state = fresh_initiation(p)
    # The responder is configured without the psk: the initiation still passes (the psk enters only later) ...
    responder_view = RemoteStatic.create(p.responder, p.initiator.public_key, None)
    r_state = consume_initiation(p.responder, parsed, lambda _pub: responder_view)
    assert r_state is not None
    ephemeral = x(CASE["responder"]["ephemeral_private"])
    resp, _ = create_response(p.responder, responder_view, r_state, ephemeral, 7)
    response = Response.parse(resp)
    assert response is not None
    # ... but the initiator, holding the psk, refuses the response.
    assert consume_response(p.initiator, p.responder_peer, i_state, response) is None
    assert i_state.chaining_key  # not erased by a failure


def test_forged_response_does_not_spoil_the_genuine_one() -> None:
    p, _, _, _, resp_msg, expected_keys, _ = full_handshake(CASE)
    _, i_state = fresh_initiation(p)
    genuine = Response.parse(resp_msg)
    assert genuine is not None
    forged = dataclasses.replace(genuine, encrypted_nothing=bytes(16))
    assert consume_response(p.initiator, p.responder_peer, i_state, forged) is None
    wrong_receiver = dataclasses.replace(genuine, receiver=genuine.receiver ^ 1)
    assert consume_response(p.initiator, p.responder_peer, i_state, wrong_receiver) is None
    low_order = dataclasses.replace(genuine, ephemeral=bytes(32))
    assert consume_response(p.initiator, p.responder_peer, i_state, low_order) is None
    keys = consume_response(p.initiator, p.responder_peer, i_state, genuine)
    assert keys == expected_keys
    # Erased after success, and a second consumption of the same response gets nothing.
    assert i_state.chaining_key == i_state.hash == i_state.ephemeral_private == b""
    assert i_state.ephemeral_key is None
    assert consume_response(p.initiator, p.responder_peer, i_state, genuine) is None


def test_responder_state_erased_and_single_use() -> None:
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    r_state = consume_initiation(p.responder, parsed, p.lookup)
    assert r_state is not None
    create_response(p.responder, p.initiator_peer, r_state, x(CASE["responder"]["ephemeral_private"]), 1)
    assert r_state.chaining_key == r_state.hash == b""
    assert r_state.timestamp.hex() == CASE["timestamp_tai64n"]  # still there for the Device's replay rule
    with pytest.raises(ValueError):
        create_response(p.responder, p.initiator_peer, r_state, x(CASE["responder"]["ephemeral_private"]), 1)


def test_initiator_state_without_cached_ephemeral_object() -> None:
    # An InitiatorState rebuilt from its bytes alone (ephemeral_key None) completes the same handshake.
    p, _, _, _, resp_msg, expected_keys, _ = full_handshake(CASE)
    _, state = fresh_initiation(p)
    state.ephemeral_key = None
    response = Response.parse(resp_msg)
    assert response is not None
    assert consume_response(p.initiator, p.responder_peer, state, response) == expected_keys


LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    x("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_peer_key(point: bytes) -> None:
    p = Parties.from_case(CASE)
    remote = RemoteStatic.create(p.initiator, point, None)
    assert remote.static_static is None
    with pytest.raises(CryptoError):
        crypto.dh(x(CASE["initiator"]["static_private"]), point)
    with pytest.raises(CryptoError):
        create_initiation(p.initiator, remote, x(CASE["initiator"]["ephemeral_private"]), 1, bytes(12))
    # Still usable for mac1 / cookies (which need only the public key).
    assert len(remote.mac1_key) == 32 and len(remote.cookie_key) == 32


def test_low_order_ephemeral_in_initiation_rejected() -> None:
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    for point in LOW_ORDER:
        assert consume_initiation(p.responder, dataclasses.replace(parsed, ephemeral=point), p.lookup) is None


def test_lookup_returning_low_order_peer_rejected() -> None:
    p = Parties.from_case(CASE)
    parsed, _ = fresh_initiation(p)
    broken = RemoteStatic.create(p.responder, bytes(32), None)
    assert consume_initiation(p.responder, parsed, lambda _pub: broken) is None


def test_remote_static_without_local_key() -> None:
    p = Parties.from_case(CASE)
    remote = RemoteStatic.create(None, p.responder.public_key, None)
    assert remote.static_static is None
    assert remote.mac1_key == p.responder_peer.mac1_key
    assert remote.preshared_key == bytes(32)
    with pytest.raises(ValueError):
        RemoteStatic.create(None, bytes(31), None)
    with pytest.raises(ValueError):
        RemoteStatic.create(None, p.responder.public_key, bytes(16))


def test_reprs_hold_no_secrets() -> None:
    p, _, i_state, r_state, _, i_keys, r_keys = full_handshake(CASE)
    secrets = [
        x(CASE["initiator"]["static_private"]),
        x(CASE["responder"]["static_private"]),
        x(CASE["initiator"]["ephemeral_private"]),
        x(CASE["preshared_key"]),
        i_keys.send_key,
        i_keys.receive_key,
        i_state.chaining_key,
        r_state.chaining_key,
    ]
    assert p.responder_peer.static_static is not None
    secrets.append(p.responder_peer.static_static)
    objects = (p.initiator, p.responder, p.initiator_peer, p.responder_peer, i_state, r_state, i_keys, r_keys)
    for obj in objects:
        text = repr(obj)
        for secret in secrets:
            assert secret.hex() not in text and repr(secret) not in text, type(obj).__name__


@settings(max_examples=200, deadline=None)
@given(
    sender=indices,
    ephemeral=keys32,
    encrypted_static=st.binary(min_size=48, max_size=48),
    encrypted_timestamp=st.binary(min_size=28, max_size=28),
)
def test_consume_initiation_never_raises(
    sender: int, ephemeral: bytes, encrypted_static: bytes, encrypted_timestamp: bytes
) -> None:
    p = PARTIES
    msg = Initiation(sender, ephemeral, encrypted_static, encrypted_timestamp, bytes(16), bytes(16))
    assert consume_initiation(p.responder, msg, p.lookup) is None


@settings(max_examples=200, deadline=None)
@given(sender=indices, ephemeral=keys32, encrypted_nothing=st.binary(min_size=16, max_size=16))
def test_consume_response_never_raises(sender: int, ephemeral: bytes, encrypted_nothing: bytes) -> None:
    p = PARTIES
    _, state = initiate(CASE, p)
    msg = Response(sender, state.sender_index, ephemeral, encrypted_nothing, bytes(16), bytes(16))
    assert consume_response(p.initiator, p.responder_peer, state, msg) is None
    assert state.chaining_key


PARTIES = Parties.from_case(CASE)
