"""mac1, mac2 and cookie replies: WireGuard's denial-of-service defence (paper §5.3 and §5.4.7).

mac1 proves the sender knows our public key, and is checked before any expensive work. mac2 proves the sender
can receive at its source address: it is keyed with a cookie that only a reply sent to that address revealed.
The Device decides when it is under load and therefore demands mac2 (and rate-limits); this module only
computes and checks.
"""

from __future__ import annotations

import hmac as _hmac
from socket import AF_INET as _AF_INET
from socket import AF_INET6 as _AF_INET6
from socket import inet_pton as _inet_pton
from typing import Final

from wgpy.protocol.constants import COOKIE_REFRESH_TIME, KEY_LEN
from wgpy.protocol.crypto import CryptoError, mac, xaead_decrypt, xaead_encrypt
from wgpy.protocol.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_MAC1_OFFSET,
    CookieReply,
    MessageType,
    mac_offsets,
)
from wgpy.protocol.noise import LocalStatic, RemoteStatic
from wgpy.protocol.rng import RandomSource

__all__ = [
    "COOKIE_LEN",
    "COOKIE_NONCE_LEN",
    "COOKIE_SECRET_LATENCY",
    "CookieChecker",
    "CookieGenerator",
    "endpoint_source_bytes",
]

COOKIE_LEN: Final = 16
COOKIE_NONCE_LEN: Final = 24
COOKIE_SECRET_LATENCY: Final = 5.0
"""Linux (cookie.c) stops using a cookie this much before COOKIE_REFRESH_TIME, so that a cookie is not used
just as the responder's secret rotates under it. wireguard-go uses the full 120 s; either interoperates."""

_MAC_LEN: Final = 16
_ZERO_MAC: Final = bytes(_MAC_LEN)


def endpoint_source_bytes(host: str, port: int) -> bytes:
    """The bytes a cookie is bound to: IP address (4 or 16 bytes) then the port as a big-endian u16.

    The layout is Linux's make_cookie(); only the responder ever recomputes it, so it is a local choice.
    """
    # inet_pton is several times cheaper than ipaddress, and this runs for every handshake message under load.
    family = _AF_INET6 if ":" in host else _AF_INET
    try:
        return _inet_pton(family, host) + port.to_bytes(2, "big")
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None


def _mac_offsets(message: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    offsets = mac_offsets(len(message))
    if offsets is None:
        return None
    expected = MessageType.INITIATION if offsets[0] == INITIATION_MAC1_OFFSET else MessageType.RESPONSE
    return offsets if message[0] == expected else None


class CookieChecker:
    """Responder side, one per Device: checks mac1 and mac2 and makes cookie replies.

    The secret R is drawn from ``rng`` when a cookie reply needs it and is older than ``refresh`` seconds
    (or was never drawn); a mac2 made with an expired secret is invalid, so cookies live at most
    ``refresh`` seconds.
    """

    __slots__ = ("_local", "_refresh", "_rng", "_secret", "_secret_time")

    def __init__(
        self, local: LocalStatic | None, rng: RandomSource, refresh: float = COOKIE_REFRESH_TIME
    ) -> None:
        self._local = local
        self._rng = rng
        self._refresh = refresh
        self._secret = b""
        self._secret_time: float | None = None

    def set_local(self, local: LocalStatic | None) -> None:
        """Follow a change of our static key: mac1 and the cookie encryption key depend on it."""
        self._local = local

    def check_mac1(self, message: bytes | bytearray | memoryview) -> bool:
        """Whether the mac1 of a whole initiation or response addressed to us is valid."""
        local = self._local
        offsets = _mac_offsets(message)
        if local is None or offsets is None:
            return False
        off = offsets[0]
        expected = mac(local.mac1_key, bytes(message[:off]))
        return _hmac.compare_digest(expected, bytes(message[off : off + _MAC_LEN]))

    def _cookie(self, source: bytes) -> bytes:
        return mac(self._secret, source)

    def _secret_valid(self, now: float) -> bool:
        return self._secret_time is not None and now - self._secret_time <= self._refresh

    def check_mac2(self, message: bytes | bytearray | memoryview, source: bytes, now: float) -> bool:
        """Whether mac2 is valid for a cookie we gave ``source`` (see :func:`endpoint_source_bytes`)."""
        offsets = _mac_offsets(message)
        if offsets is None or not self._secret_valid(now):
            return False
        off = offsets[1]
        if message[off : off + _MAC_LEN] == _ZERO_MAC:
            return False  # a sender without a cookie sends zeros: no need to compute anything to refuse it
        expected = mac(self._cookie(source), bytes(message[:off]))
        return _hmac.compare_digest(expected, bytes(message[off : off + _MAC_LEN]))

    def create_reply(
        self, message: bytes | bytearray | memoryview, receiver_index: int, source: bytes, now: float
    ) -> bytes:
        """The 64-byte cookie reply to ``message`` (an initiation or response whose mac1 was valid).

        ``receiver_index`` is the message's sender index. AD of the encryption is the message's mac1, so
        only the peer that sent exactly this message can use the reply.
        """
        local = self._local
        offsets = _mac_offsets(message)
        if local is None:
            raise ValueError("no local static key: cannot answer with a cookie reply")
        if offsets is None:
            raise ValueError("not a handshake initiation or response")
        if not self._secret_valid(now):
            self._secret = self._rng.token_bytes(KEY_LEN)
            self._secret_time = now
        mac1 = bytes(message[offsets[0] : offsets[0] + _MAC_LEN])
        nonce = self._rng.token_bytes(COOKIE_NONCE_LEN)
        encrypted = xaead_encrypt(local.cookie_key, nonce, self._cookie(source), mac1)
        reply = CookieReply(receiver_index, nonce, encrypted).to_bytes()
        assert len(reply) == COOKIE_REPLY_SIZE
        return reply

    def __repr__(self) -> str:
        return "CookieChecker(<secret hidden>)"


class CookieGenerator:
    """Sender side, one per peer: adds mac1 (and mac2 while holding a fresh cookie) and consumes cookie
    replies.
    """

    __slots__ = ("_cookie", "_cookie_time", "_last_mac1", "_remote")

    def __init__(self, remote: RemoteStatic) -> None:
        self._remote = remote
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        self._last_mac1: bytes | None = None

    def set_remote(self, remote: RemoteStatic) -> None:
        """Follow a recomputed :class:`RemoteStatic` (new local key or preshared key); the cookie stays."""
        self._remote = remote

    def has_cookie(self, now: float) -> bool:
        """Whether the next message will carry a mac2."""
        if self._cookie is None:
            return False
        return now - self._cookie_time < COOKIE_REFRESH_TIME - COOKIE_SECRET_LATENCY

    def add_macs(self, message: bytearray, now: float) -> None:
        """Fill in mac1 and mac2 of an initiation or response we are about to send, and remember the mac1."""
        offsets = mac_offsets(len(message))
        if offsets is None:
            raise ValueError("not a handshake initiation or response")
        off1, off2 = offsets
        mac1 = mac(self._remote.mac1_key, bytes(message[:off1]))
        message[off1:off2] = mac1
        self._last_mac1 = mac1
        if self._cookie is not None and self.has_cookie(now):
            message[off2 : off2 + _MAC_LEN] = mac(self._cookie, bytes(message[:off2]))
        else:
            message[off2 : off2 + _MAC_LEN] = _ZERO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Accept a cookie reply only if it decrypts with AD = the last mac1 we sent; each mac1 is used once.
        """
        last_mac1 = self._last_mac1
        if last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._remote.cookie_key, reply.nonce, reply.encrypted_cookie, last_mac1)
        except CryptoError:
            return False
        if len(cookie) != COOKIE_LEN:
            return False
        self._cookie = cookie
        self._cookie_time = now
        # As Linux does: a replayed copy of this reply must not refresh the cookie's age.
        self._last_mac1 = None
        return True

    def __repr__(self) -> str:
        return f"CookieGenerator(cookie={'yes' if self._cookie is not None else 'no'})"
