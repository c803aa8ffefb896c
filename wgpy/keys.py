"""Key helpers at the edges: generation, base64 and hex exactly as `wg` accepts them, private key files.

Everywhere inside wgpy a key is 32 raw bytes; text forms exist only here. The base64 decoder is
deliberately stricter than :func:`base64.b64decode`: wireguard-tools' ``key_from_base64`` accepts exactly 44
characters of the standard alphabet ending in a single ``=``, and rejects a last data character whose unused
low bits are not zero (a non-canonical encoding). Python's decoder would silently accept such keys, so two
tools could disagree on what a config file means; we follow wg.
"""

from __future__ import annotations

import binascii
import os
import secrets

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_LEN = 32
KEY_LEN_BASE64 = 44
KEY_LEN_HEX = 64

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class InvalidKeyError(ValueError):
    """A key in text form that wg would refuse. The message never contains the key itself."""


def _clamp(key: bytes) -> bytes:
    """Curve25519 clamping, as wg applies to generated private keys (RFC 7748 section 5)."""
    b = bytearray(key)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key() -> bytes:
    """A fresh clamped X25519 private key, as `wg genkey` prints."""
    return _clamp(secrets.token_bytes(KEY_LEN))


def generate_preshared_key() -> bytes:
    """32 random bytes, as `wg genpsk` prints (no clamping)."""
    return secrets.token_bytes(KEY_LEN)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of `private` (clamping applies implicitly, as in wg pubkey)."""
    if len(private) != KEY_LEN:
        raise InvalidKeyError(f"a private key is {KEY_LEN} bytes, not {len(private)}")
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def to_base64(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise InvalidKeyError(f"a key is {KEY_LEN} bytes, not {len(key)}")
    return binascii.b2a_base64(key, newline=False).decode("ascii")


def from_base64(text: str) -> bytes:
    """Decode a key with exactly the acceptance of wireguard-tools' ``key_from_base64``."""
    if len(text) != KEY_LEN_BASE64 or text[KEY_LEN_BASE64 - 1] != "=":
        raise InvalidKeyError("Key is not the correct length or format")
    values = [_B64_VALUE.get(c, -1) for c in text[: KEY_LEN_BASE64 - 1]]
    # The last data character carries 6 bits of which only the top 4 belong to the key: the rest must be 0.
    if min(values) < 0 or values[-1] & 0b11:
        raise InvalidKeyError("Key is not the correct length or format")
    return binascii.a2b_base64(text.encode("ascii"))


def to_hex(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise InvalidKeyError(f"a key is {KEY_LEN} bytes, not {len(key)}")
    return key.hex()


def from_hex(text: str) -> bytes:
    """64 hex digits, either case, as ``key_from_hex`` in wireguard-tools (used on the UAPI)."""
    if len(text) != KEY_LEN_HEX or not set(text) <= _HEX_DIGITS:
        raise InvalidKeyError("Key is not the correct length or format")
    return bytes.fromhex(text)


def is_zero(key: bytes | None) -> bool:
    """wg treats an all-zero key as "no key" (no private key, no preshared key)."""
    return key is None or not any(key)


def write_private_key_file(path: str | os.PathLike[str], key: bytes) -> None:
    """Write `key` in base64 plus newline to `path`, created 0600 whatever the umask (as under `umask 077`).

    An existing file is truncated and its mode tightened too: a private key must never sit in a readable file.
    """
    text = (to_base64(key) + "\n").encode("ascii")
    old = os.umask(0o077)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    finally:
        os.umask(old)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text)
    finally:
        os.close(fd)
