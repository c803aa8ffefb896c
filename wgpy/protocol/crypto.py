"""The primitives of the WireGuard paper (§5.4): HASH, MAC, HMAC, KDF, DH, AEAD and XAEAD.

Every primitive comes from a maintained library: BLAKE2s from :mod:`hashlib`, X25519 and ChaCha20-Poly1305
from ``cryptography`` and XChaCha20-Poly1305 from PyNaCl (libsodium), because ``cryptography`` has no
XChaCha. Only the HMAC and KDF glue is written here, since neither library offers HMAC over BLAKE2s as fast
as the few lines below (the :mod:`hmac` module costs about twice as much per call, and a handshake makes
over a dozen of them).

Private keys travel as 32-byte ``bytes`` through the public API, but building a ``cryptography``
private-key object costs as much as a whole Diffie-Hellman (it derives the public key). :class:`PrivateKey`
therefore keeps the object; ``noise.py`` holds one per static key and one per ephemeral key (dropped as
soon as the handshake completes), and :func:`dh` / :func:`public_key` keep a small cache keyed by the
private bytes for callers that only have bytes (static keys in practice: never pass an ephemeral key
through them if it must not outlive its use).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgpy.protocol.constants import CONSTRUCTION, IDENTIFIER, KEY_LEN
from wgpy.protocol.rng import RandomSource

__all__ = [
    "CHAINING_KEY0",
    "HASH0",
    "MAC_LEN",
    "TAG_LEN",
    "XNONCE_LEN",
    "Aead",
    "CryptoError",
    "PrivateKey",
    "aead_decrypt",
    "aead_encrypt",
    "chacha20poly1305_decrypt",
    "chacha20poly1305_encrypt",
    "clamp",
    "dh",
    "generate_private_key",
    "hash",
    "hmac",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "nonce",
    "public_key",
    "xaead_decrypt",
    "xaead_encrypt",
]

MAC_LEN: Final = 16
TAG_LEN: Final = 16
XNONCE_LEN: Final = 24

_blake2s = hashlib.blake2s
_BLOCK_LEN: Final = 64
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))
_NONCE: Final = struct.Struct("<4xQ")
_ZERO_KEY: Final = bytes(KEY_LEN)


class CryptoError(Exception):
    """Authentication failed, or a Diffie-Hellman result was all zero (low-order point).

    Messages never carry key material.
    """


def hash(*parts: bytes) -> bytes:
    """HASH: BLAKE2s-256 of the concatenation of ``parts``."""
    if len(parts) == 1:
        return _blake2s(parts[0]).digest()
    h = _blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC: keyed BLAKE2s with a 16-byte digest (not a truncation of the 32-byte one: the length is a
    parameter).
    """
    return _blake2s(data, digest_size=MAC_LEN, key=key).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256 (RFC 2104, block 64; longer keys are hashed first)."""
    if len(key) > _BLOCK_LEN:
        key = _blake2s(key).digest()
    key = key.ljust(_BLOCK_LEN, b"\0")
    inner = _blake2s(key.translate(_IPAD) + data).digest()
    return _blake2s(key.translate(_OPAD) + inner).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1: the first output of the HKDF-like chain of the paper."""
    return hmac(hmac(key, data), b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2: t1 = HMAC(t0, 1), t2 = HMAC(t0, t1 || 2) with t0 = HMAC(key, data)."""
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    return t1, hmac(t0, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3: KDF2 plus t3 = HMAC(t0, t2 || 3)."""
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    return t1, t2, hmac(t0, t2 + b"\x03")


CHAINING_KEY0: Final = hash(CONSTRUCTION)
"""C_i: the initial chaining key, HASH(CONSTRUCTION)."""
HASH0: Final = hash(CHAINING_KEY0, IDENTIFIER)
"""H_i before the responder's static key is mixed in: HASH(C_i || IDENTIFIER)."""


def clamp(private: bytes) -> bytes:
    """Clamp a 32-byte scalar as RFC 7748 does, so stored keys equal what X25519 really uses."""
    if len(private) != KEY_LEN:
        raise ValueError("an X25519 private key is 32 bytes")
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def _public_obj(public: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(public)
    except ValueError:
        raise CryptoError("invalid X25519 public key") from None


def _exchange(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        shared = private.exchange(public)
    except ValueError:
        # OpenSSL refuses to return the all-zero result of a low-order point.
        raise CryptoError("X25519 result is all zero (low-order public key)") from None
    if shared == _ZERO_KEY:
        raise CryptoError("X25519 result is all zero (low-order public key)")
    return shared


class PrivateKey:
    """An X25519 private key with its ``cryptography`` object and public key computed once.

    Creating the object is as expensive as one DH, so handshake code keeps one per key and reuses it.
    """

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != KEY_LEN:
            raise ValueError("an X25519 private key is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.public: bytes = self._key.public_key().public_bytes_raw()

    def dh(self, public: bytes | X25519PublicKey) -> bytes:
        """DH(self, public); raises :class:`CryptoError` for an invalid or low-order public key."""
        obj = public if isinstance(public, X25519PublicKey) else _public_obj(public)
        return _exchange(self._key, obj)

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public.hex()})"


# Small cache for callers that only hold private bytes (static keys). Bounded so that it can never grow with
# traffic; the oldest entry goes first.
_CACHE_MAX: Final = 32
_key_cache: dict[bytes, PrivateKey] = {}


def _cached(private: bytes) -> PrivateKey:
    key = _key_cache.get(private)
    if key is None:
        key = PrivateKey(private)
        if len(_key_cache) >= _CACHE_MAX:
            del _key_cache[next(iter(_key_cache))]
        _key_cache[private] = key
    return key


def dh(private: bytes, public: bytes) -> bytes:
    """DH: X25519. Raises :class:`CryptoError` on an all-zero result (a low-order public key)."""
    return _cached(private).dh(public)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    return _cached(private).public


def generate_private_key(rng: RandomSource) -> bytes:
    """A fresh clamped private key from ``rng``."""
    return clamp(rng.token_bytes(KEY_LEN))


def nonce(counter: int) -> bytes:
    """The transport AEAD nonce: 4 zero bytes then the 64-bit counter, little-endian."""
    return _NONCE.pack(counter)


def chacha20poly1305_encrypt(key: bytes, nonce12: bytes, plain: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439) with a raw 12-byte nonce; the result ends with the 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(nonce12, plain, aad)


def chacha20poly1305_decrypt(key: bytes, nonce12: bytes, cipher: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`chacha20poly1305_encrypt`; :class:`CryptoError` if the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce12, cipher, aad)
    except (InvalidTag, ValueError):
        raise CryptoError("ChaCha20-Poly1305 authentication failed") from None


def aead_encrypt(key: bytes, counter: int, plain: bytes, aad: bytes) -> bytes:
    """AEAD(key, counter, plain, aad) of the paper: ChaCha20-Poly1305 with the counter nonce."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plain, aad)


def aead_decrypt(key: bytes, counter: int, cipher: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; :class:`CryptoError` on a bad tag or a too-short input."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), cipher, aad)
    except (InvalidTag, ValueError):
        raise CryptoError("AEAD authentication failed") from None


class Aead:
    """AEAD with a fixed key, for transport keypairs: builds the cipher object once instead of per packet."""

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        self._cipher = ChaCha20Poly1305(key)

    def encrypt(self, counter: int, plain: bytes, aad: bytes = b"") -> bytes:
        return self._cipher.encrypt(_NONCE.pack(counter), plain, aad)

    def decrypt(self, counter: int, cipher: bytes, aad: bytes = b"") -> bytes:
        """:class:`CryptoError` on a bad tag or a too-short input."""
        try:
            return self._cipher.decrypt(_NONCE.pack(counter), cipher, aad)
        except (InvalidTag, ValueError):
            raise CryptoError("AEAD authentication failed") from None

    def __repr__(self) -> str:
        return "Aead(<key hidden>)"


def xaead_encrypt(key: bytes, nonce: bytes, plain: bytes, aad: bytes) -> bytes:
    """XAEAD: XChaCha20-Poly1305 with a 24-byte nonce (cookie replies only); result ends with the tag."""
    out: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plain, aad, nonce, key)
    return out


def xaead_decrypt(key: bytes, nonce: bytes, cipher: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`xaead_encrypt`; :class:`CryptoError` on a bad tag or malformed input."""
    try:
        out: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(cipher, aad, nonce, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise CryptoError("XAEAD authentication failed") from None
    return out
