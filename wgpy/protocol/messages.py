"""Wire formats of the four WireGuard messages (paper §5.4): parse and build.

Parsing is the first thing done to hostile input, so it is cheap and total: the exact length and the type word
(type byte plus three zero reserved bytes) are checked before anything else is read, and every failure returns
``None`` instead of raising. All integers are little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Self

__all__ = [
    "COOKIE_REPLY_SIZE",
    "INITIATION_MAC1_OFFSET",
    "INITIATION_MAC2_OFFSET",
    "INITIATION_SIZE",
    "RESPONSE_MAC1_OFFSET",
    "RESPONSE_MAC2_OFFSET",
    "RESPONSE_SIZE",
    "TRANSPORT_HEADER",
    "TRANSPORT_HEADER_SIZE",
    "TRANSPORT_MIN_SIZE",
    "CookieReply",
    "Initiation",
    "MessageType",
    "Response",
    "mac_offsets",
    "message_type",
]


class MessageType(IntEnum):
    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TRANSPORT_MIN_SIZE: Final = 32  # header + the 16-byte tag of an empty (keepalive) payload

INITIATION_MAC1_OFFSET: Final = 116
INITIATION_MAC2_OFFSET: Final = 132
RESPONSE_MAC1_OFFSET: Final = 60
RESPONSE_MAC2_OFFSET: Final = 76

TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
"""Type word (must equal 4: type byte and zero reserved bytes read as one u32), receiver index, counter."""

_TYPE_WORD: Final = struct.Struct("<I")
# type word, sender, ephemeral, encrypted static, encrypted timestamp, mac1, mac2
_INITIATION: Final = struct.Struct("<II32s48s28s16s16s")
# type word, sender, receiver, ephemeral, encrypted nothing, mac1, mac2
_RESPONSE: Final = struct.Struct("<III32s16s16s16s")
# type word, receiver, nonce, encrypted cookie
_COOKIE_REPLY: Final = struct.Struct("<II24s32s")

assert _INITIATION.size == INITIATION_SIZE
assert _RESPONSE.size == RESPONSE_SIZE
assert _COOKIE_REPLY.size == COOKIE_REPLY_SIZE
assert TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE


def message_type(data: bytes | bytearray | memoryview) -> int | None:
    """The message type if ``data`` starts with a known type byte followed by three zero bytes, else ``None``.

    Only the first four bytes are looked at; the caller still checks the length (via ``parse``).
    """
    if len(data) < 4:
        return None
    (word,) = _TYPE_WORD.unpack_from(data)
    return word if 1 <= word <= 4 else None


def _check_lengths(*pairs: tuple[bytes, int]) -> None:
    # struct's "Ns" silently pads or truncates; building a message from a wrong-sized field is a bug.
    for value, size in pairs:
        if len(value) != size:
            raise ValueError(f"message field is {len(value)} bytes, expected {size}")


def mac_offsets(length: int) -> tuple[int, int] | None:
    """(mac1 offset, mac2 offset) of a handshake message of ``length`` bytes, or ``None`` for other lengths.
    """
    if length == INITIATION_SIZE:
        return INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET
    if length == RESPONSE_SIZE:
        return RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET
    return None


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation (type 1, 148 bytes). ``sender`` is the initiator's index for this handshake."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self | None:
        if len(data) != INITIATION_SIZE:
            return None
        fields = _INITIATION.unpack_from(data)
        if fields[0] != MessageType.INITIATION:
            return None
        return cls(*fields[1:])

    def to_bytes(self) -> bytes:
        _check_lengths(
            (self.ephemeral, 32), (self.encrypted_static, 48), (self.encrypted_timestamp, 28),
            (self.mac1, 16), (self.mac2, 16),
        )
        return _INITIATION.pack(
            MessageType.INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response (type 2, 92 bytes). ``receiver`` echoes the initiation's sender index."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self | None:
        if len(data) != RESPONSE_SIZE:
            return None
        fields = _RESPONSE.unpack_from(data)
        if fields[0] != MessageType.RESPONSE:
            return None
        return cls(*fields[1:])

    def to_bytes(self) -> bytes:
        _check_lengths((self.ephemeral, 32), (self.encrypted_nothing, 16), (self.mac1, 16), (self.mac2, 16))
        return _RESPONSE.pack(
            MessageType.RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply (type 3, 64 bytes). ``receiver`` is the sender index of the message being answered."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self | None:
        if len(data) != COOKIE_REPLY_SIZE:
            return None
        fields = _COOKIE_REPLY.unpack_from(data)
        if fields[0] != MessageType.COOKIE_REPLY:
            return None
        return cls(*fields[1:])

    def to_bytes(self) -> bytes:
        _check_lengths((self.nonce, 24), (self.encrypted_cookie, 32))
        return _COOKIE_REPLY.pack(MessageType.COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie)
