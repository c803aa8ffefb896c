"""crypto.py against every entry of the shared crypto.json, plus the properties the handshake relies on."""

from __future__ import annotations

import ctypes
import hashlib
import hmac as std_hmac
from typing import Any

import nacl._sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_vector
from wgpy.protocol import crypto
from wgpy.protocol.constants import CONSTRUCTION, IDENTIFIER, LABEL_COOKIE, LABEL_MAC1
from wgpy.protocol.crypto import CryptoError

VEC: Any = load_vector("crypto.json")


def x(s: str) -> bytes:
    return bytes.fromhex(s)


def ids(entries: list[dict[str, Any]], key: str = "name") -> list[str]:
    return [f"{i}-{e.get(key, e.get('source', ''))}"[:60] for i, e in enumerate(entries)]


@pytest.mark.parametrize("entry", VEC["blake2s256"], ids=ids(VEC["blake2s256"]))
def test_blake2s256(entry: dict[str, Any]) -> None:
    data = x(entry["input"])
    assert crypto.hash(data).hex() == entry["blake2s256"]
    # HASH of several parts is HASH of their concatenation, wherever the cut falls.
    for cut in (0, 1, len(data) // 2, len(data)):
        assert crypto.hash(data[:cut], data[cut:]).hex() == entry["blake2s256"]


@pytest.mark.parametrize("entry", VEC["blake2s_keyed"], ids=ids(VEC["blake2s_keyed"], "outlen"))
def test_blake2s_keyed(entry: dict[str, Any]) -> None:
    key, data = x(entry["key"]), x(entry["input"])
    if entry["outlen"] == 16:
        assert crypto.mac(key, data).hex() == entry["output"]
    else:
        # crypto.py has no 32-byte keyed hash: the entry checks hashlib itself, which MAC() is built on.
        assert entry["outlen"] == 32
        assert hashlib.blake2s(data, key=key).hexdigest() == entry["output"]
        assert crypto.mac(key, data).hex() != entry["output"][:32]  # MAC is not a truncation


@pytest.mark.parametrize("entry", VEC["hmac_blake2s"], ids=ids(VEC["hmac_blake2s"]))
def test_hmac_blake2s(entry: dict[str, Any]) -> None:
    key, data = x(entry["key"]), x(entry["input"])
    assert crypto.hmac(key, data).hex() == entry["hmac"]
    assert std_hmac.digest(key, data, "blake2s").hex() == entry["hmac"]


@pytest.mark.parametrize("entry", VEC["kdf"], ids=ids(VEC["kdf"]))
def test_kdf(entry: dict[str, Any]) -> None:
    key, data = x(entry["key"]), x(entry["input"])
    assert [crypto.kdf1(key, data).hex()] == entry["kdf1"]
    assert [o.hex() for o in crypto.kdf2(key, data)] == entry["kdf2"]
    assert [o.hex() for o in crypto.kdf3(key, data)] == entry["kdf3"]


def test_constants() -> None:
    c = VEC["constants"]
    assert c["CONSTRUCTION"]["hex"] == CONSTRUCTION.hex()
    assert c["IDENTIFIER"]["hex"] == IDENTIFIER.hex()
    assert c["LABEL_MAC1"]["hex"] == LABEL_MAC1.hex()
    assert c["LABEL_COOKIE"]["hex"] == LABEL_COOKIE.hex()
    assert crypto.CHAINING_KEY0.hex() == c["initial_chaining_key_Ci"]
    assert crypto.HASH0.hex() == c["initial_hash_Hi"]


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    # PyNaCl does not wrap crypto_core_hchacha20, but its bundled libsodium exports it; this is the very
    # function PyNaCl's XChaCha20-Poly1305 (and so xaead_*) uses internally.
    lib = ctypes.CDLL(nacl._sodium.__file__)
    out = ctypes.create_string_buffer(32)
    rc = lib.crypto_core_hchacha20(out, nonce16, key, None)
    assert rc == 0
    return out.raw


@pytest.mark.parametrize("entry", VEC["hchacha20"], ids=ids(VEC["hchacha20"], "source"))
def test_hchacha20(entry: dict[str, Any]) -> None:
    assert _hchacha20(x(entry["key"]), x(entry["nonce16"])).hex() == entry["output"]


@pytest.mark.parametrize("entry", VEC["xchacha20poly1305"], ids=ids(VEC["xchacha20poly1305"], "source"))
def test_xchacha20poly1305(entry: dict[str, Any]) -> None:
    key, nonce, aad, plain = x(entry["key"]), x(entry["nonce24"]), x(entry["aad"]), x(entry["plaintext"])
    expected = x(entry["ciphertext"])
    if "tag" in entry and not expected.endswith(x(entry["tag"])):
        expected += x(entry["tag"])
    assert crypto.xaead_encrypt(key, nonce, plain, aad) == expected
    assert crypto.xaead_decrypt(key, nonce, expected, aad) == plain
    if "hchacha20_subkey" in entry:
        # XChaCha20 = HChaCha20 subkey + ChaCha20 with the last 8 nonce bytes (draft-irtf-cfrg-xchacha §2.3).
        subkey = _hchacha20(key, nonce[:16])
        assert subkey.hex() == entry["hchacha20_subkey"]
        nonce12 = x(entry["chacha_nonce12"])
        assert crypto.chacha20poly1305_encrypt(subkey, nonce12, plain, aad) == expected
    tampered = bytearray(expected)
    tampered[-1] ^= 1
    with pytest.raises(CryptoError):
        crypto.xaead_decrypt(key, nonce, bytes(tampered), aad)
    with pytest.raises(CryptoError):
        crypto.xaead_decrypt(key, nonce, expected, aad + b"x")


@pytest.mark.parametrize("entry", VEC["chacha20poly1305"], ids=ids(VEC["chacha20poly1305"], "source"))
def test_chacha20poly1305(entry: dict[str, Any]) -> None:
    key, nonce12, aad, plain = x(entry["key"]), x(entry["nonce12"]), x(entry["aad"]), x(entry["plaintext"])
    expected = x(entry["ciphertext"])
    assert crypto.chacha20poly1305_encrypt(key, nonce12, plain, aad) == expected
    assert crypto.chacha20poly1305_decrypt(key, nonce12, expected, aad) == plain
    with pytest.raises(CryptoError):
        crypto.chacha20poly1305_decrypt(key, nonce12, expected[:-1] + bytes([expected[-1] ^ 0x80]), aad)


def test_nonce_layout() -> None:
    assert crypto.nonce(0) == bytes(12)
    assert crypto.nonce(1) == bytes(4) + b"\x01" + bytes(7)
    assert crypto.nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")
    assert crypto.nonce((1 << 64) - 1) == bytes(4) + b"\xff" * 8


@settings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(min_value=0, max_value=(1 << 64) - 1),
    plain=st.binary(max_size=200),
    aad=st.binary(max_size=64),
)
def test_aead_uses_counter_nonce(key: bytes, counter: int, plain: bytes, aad: bytes) -> None:
    sealed = crypto.aead_encrypt(key, counter, plain, aad)
    assert sealed == crypto.chacha20poly1305_encrypt(key, crypto.nonce(counter), plain, aad)
    assert len(sealed) == len(plain) + crypto.TAG_LEN
    assert crypto.aead_decrypt(key, counter, sealed, aad) == plain
    aead = crypto.Aead(key)
    assert aead.encrypt(counter, plain, aad) == sealed
    assert aead.decrypt(counter, sealed, aad) == plain
    with pytest.raises(CryptoError):
        crypto.aead_decrypt(key, counter ^ 1, sealed, aad)
    with pytest.raises(CryptoError):
        aead.decrypt(counter, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad)


@pytest.mark.parametrize("length", [0, 1, 15])
def test_aead_decrypt_too_short_is_crypto_error(length: int) -> None:
    key = bytes(range(32))
    with pytest.raises(CryptoError):
        crypto.aead_decrypt(key, 0, bytes(length), b"")
    with pytest.raises(CryptoError):
        crypto.Aead(key).decrypt(0, bytes(length))
    with pytest.raises(CryptoError):
        crypto.xaead_decrypt(key, bytes(24), bytes(length), b"")


def test_xaead_bad_nonce_is_crypto_error() -> None:
    with pytest.raises(CryptoError):
        crypto.xaead_decrypt(bytes(32), bytes(12), bytes(32), b"")


class FixedRandom:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def token_bytes(self, n: int) -> bytes:
        return self.data[:n]

    def index(self) -> int:
        return 0

    def jitter(self, max_seconds: float) -> float:
        return 0.0


def test_clamp_and_generate() -> None:
    raw = b"\xff" * 32
    clamped = crypto.clamp(raw)
    assert clamped[0] == 0xF8 and clamped[31] == 0x7F and clamped[1:31] == raw[1:31]
    assert crypto.clamp(bytes(32))[31] == 0x40
    assert crypto.clamp(clamped) == clamped
    assert crypto.generate_private_key(FixedRandom(raw)) == clamped
    with pytest.raises(ValueError):
        crypto.clamp(bytes(31))


# RFC 7748 §6.1: Alice's and Bob's keys and their shared secret.
ALICE = x("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = x("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB = x("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = x("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = x("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_x25519_rfc7748() -> None:
    assert crypto.public_key(ALICE) == ALICE_PUB
    assert crypto.public_key(BOB) == BOB_PUB
    assert crypto.dh(ALICE, BOB_PUB) == SHARED
    assert crypto.dh(BOB, ALICE_PUB) == SHARED
    key = crypto.PrivateKey(ALICE)
    assert key.public == ALICE_PUB and key.dh(BOB_PUB) == SHARED
    assert ALICE.hex() not in repr(key)


# Points of small order on Curve25519 (and their non-canonical encodings): X25519 with them is all zero.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    x("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    x("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    x("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    x("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    x("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER, ids=[p.hex()[:8] for p in LOW_ORDER])
def test_dh_low_order_raises(point: bytes) -> None:
    with pytest.raises(CryptoError) as info:
        crypto.dh(ALICE, point)
    assert ALICE.hex() not in str(info.value)
    with pytest.raises(CryptoError):
        crypto.PrivateKey(BOB).dh(point)


def test_dh_wrong_length_public_is_crypto_error() -> None:
    with pytest.raises(CryptoError):
        crypto.dh(ALICE, bytes(31))


def test_key_cache_is_bounded() -> None:
    rng_keys = [crypto.clamp(hashlib.blake2s(i.to_bytes(2, "big")).digest()) for i in range(100)]
    pubs = [crypto.public_key(k) for k in rng_keys]
    assert len(crypto._key_cache) <= crypto._CACHE_MAX
    # Evicted keys still work (rebuilt on demand) and agree with a fresh object.
    assert crypto.public_key(rng_keys[0]) == pubs[0] == crypto.PrivateKey(rng_keys[0]).public
    assert crypto.dh(rng_keys[0], pubs[1]) == crypto.dh(rng_keys[1], pubs[0])
