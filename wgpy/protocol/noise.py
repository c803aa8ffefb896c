"""The Noise_IKpsk2 handshake of WireGuard (paper §5.4.2-§5.4.5), both roles, as pure functions.

These functions only do the cryptography. The rules around them belong to the Device, which is their only
caller besides tests and fuzzers:

- mac1 / mac2 and cookie replies (``cookie.py``) are checked before :func:`consume_initiation` /
  :func:`consume_response` are called, and filled in after :func:`create_initiation` /
  :func:`create_response`; the messages built here carry zero macs.
- After :func:`consume_initiation` the Device must accept the initiation only if
  ``ResponderState.timestamp`` is strictly greater (bytewise, see ``tai64n.py``) than the greatest timestamp
  accepted from that peer, and only if the peer's previous initiation is at least HANDSHAKE_INITIATION_RATE
  seconds old; otherwise it drops the initiation without answering and without touching the peer's state.
- Session indices (``sender_index``) are drawn and registered in the index table by the Device, and
  :func:`consume_response` is called with the :class:`InitiatorState` the response's receiver index points to.

Precomputation: everything that depends only on the static keys (the first hash, the mac1 and cookie keys, the
static-static DH) is computed once into :class:`LocalStatic` / :class:`RemoteStatic`, so a responder handshake
costs four X25519 operations (one DH with our static key, the ephemeral key generation and two DHs with it)
and a handful of BLAKE2s calls.

Erasure: Python cannot wipe immutable ``bytes``, so "erase" here means dropping every reference the handshake
state holds (replacing it with ``b""``) as soon as the transport keys are derived, as far as this module
controls.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from wgpy.protocol.constants import KEY_LEN, LABEL_COOKIE, LABEL_MAC1
from wgpy.protocol.crypto import (
    CHAINING_KEY0,
    HASH0,
    CryptoError,
    PrivateKey,
    aead_decrypt,
    aead_encrypt,
    hash,
    kdf1,
    kdf2,
    kdf3,
)
from wgpy.protocol.messages import Initiation, MessageType, Response

__all__ = [
    "InitiatorState",
    "LocalStatic",
    "RemoteStatic",
    "ResponderState",
    "SessionKeys",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
]

_ZERO_KEY: Final = bytes(KEY_LEN)
_EMPTY: Final = b""
# Initiation and response without their macs (which stay zero here): type word, indices, the Noise fields.
_INITIATION_BODY: Final = struct.Struct("<II32s48s28s")
_RESPONSE_BODY: Final = struct.Struct("<III32s16s")
_INITIATION_SIZE: Final = 148
_RESPONSE_SIZE: Final = 92


@dataclass(slots=True)
class LocalStatic:
    """Our static key pair and everything derived from it alone, computed once per private key."""

    private_key: bytes = field(repr=False)
    public_key: bytes
    hash0: bytes = field(repr=False)
    """HASH(HASH(C_i || IDENTIFIER) || our public key): the responder's starting hash."""
    mac1_key: bytes = field(repr=False)
    """HASH(LABEL_MAC1 || our public key): checks the mac1 of messages sent to us."""
    cookie_key: bytes = field(repr=False)
    """HASH(LABEL_COOKIE || our public key): encrypts the cookie replies we send."""
    key: PrivateKey = field(repr=False, compare=False)
    """The X25519 object, kept so that each handshake does not rebuild it (as costly as a DH)."""

    @classmethod
    def from_private(cls, private: bytes) -> LocalStatic:
        key = PrivateKey(private)
        public = key.public
        return cls(
            private_key=private,
            public_key=public,
            hash0=hash(HASH0, public),
            mac1_key=hash(LABEL_MAC1, public),
            cookie_key=hash(LABEL_COOKIE, public),
            key=key,
        )


@dataclass(slots=True)
class RemoteStatic:
    """A peer's static public key and preshared key, with what can be precomputed from them and our key.

    Recreate it whenever the peer's key, the preshared key or our private key changes.
    """

    public_key: bytes
    preshared_key: bytes = field(repr=False)
    """32 zero bytes when the peer has no preshared key (as the protocol defines it)."""
    static_static: bytes | None = field(repr=False)
    """DH(our static, peer static); ``None`` without a local key or when the peer key is low-order, in
    which case no handshake with this peer is possible in either direction."""
    hash0: bytes = field(repr=False)
    """HASH(HASH(C_i || IDENTIFIER) || peer public key): the initiator's starting hash."""
    mac1_key: bytes = field(repr=False)
    """HASH(LABEL_MAC1 || peer public key): mac1 of the messages we send to the peer."""
    cookie_key: bytes = field(repr=False)
    """HASH(LABEL_COOKIE || peer public key): decrypts the cookie replies the peer sends us."""
    public_obj: X25519PublicKey = field(repr=False, compare=False)

    @classmethod
    def create(
        cls, local: LocalStatic | None, public_key: bytes, preshared_key: bytes | None
    ) -> RemoteStatic:
        if len(public_key) != KEY_LEN:
            raise ValueError("a public key is 32 bytes")
        if preshared_key is None:
            preshared_key = _ZERO_KEY
        elif len(preshared_key) != KEY_LEN:
            raise ValueError("a preshared key is 32 bytes")
        public_obj = X25519PublicKey.from_public_bytes(public_key)
        static_static: bytes | None = None
        if local is not None:
            try:
                static_static = local.key.dh(public_obj)
            except CryptoError:
                static_static = None
        return cls(
            public_key=public_key,
            preshared_key=preshared_key,
            static_static=static_static,
            hash0=hash(HASH0, public_key),
            mac1_key=hash(LABEL_MAC1, public_key),
            cookie_key=hash(LABEL_COOKIE, public_key),
            public_obj=public_obj,
        )


@dataclass(slots=True)
class InitiatorState:
    """What an initiator keeps between sending an initiation and consuming its response."""

    chaining_key: bytes = field(repr=False)
    hash: bytes = field(repr=False)
    ephemeral_private: bytes = field(repr=False)
    sender_index: int
    ephemeral_key: PrivateKey | None = field(default=None, repr=False, compare=False)

    def erase(self) -> None:
        """Drop the chaining key, hash and ephemeral key (done by :func:`consume_response` on success)."""
        self.chaining_key = _EMPTY
        self.hash = _EMPTY
        self.ephemeral_private = _EMPTY
        self.ephemeral_key = None


@dataclass(slots=True)
class ResponderState:
    """A consumed (authenticated) initiation, waiting for the Device's timestamp / rate checks and a response.
    """

    remote_static_public: bytes
    timestamp: bytes
    """The decrypted TAI64N timestamp (12 bytes); the Device compares it bytewise with the last accepted one.
    """
    remote_index: int
    remote_ephemeral: bytes
    chaining_key: bytes = field(repr=False)
    hash: bytes = field(repr=False)

    def erase(self) -> None:
        """Drop the chaining key and hash (done by :func:`create_response`)."""
        self.chaining_key = _EMPTY
        self.hash = _EMPTY


@dataclass(slots=True)
class SessionKeys:
    """Transport keys of a completed handshake and the two indices that name the session."""

    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    local_index: int
    remote_index: int
    is_initiator: bool


def create_initiation(
    local: LocalStatic,
    remote: RemoteStatic,
    ephemeral_private: bytes,
    sender_index: int,
    timestamp: bytes,
) -> tuple[bytearray, InitiatorState]:
    """Build a 148-byte initiation (mac1 and mac2 zero: ``CookieGenerator.add_macs`` fills them).

    Raises :class:`CryptoError` if ``remote.static_static`` is ``None`` (no handshake is possible with a
    low-order peer key, or without a local key) or ``ephemeral_private`` gives a zero DH (it cannot when
    clamped).
    """
    if remote.static_static is None:
        raise CryptoError("no handshake possible with this peer (low-order key or no local key)")
    ephemeral = PrivateKey(ephemeral_private)
    e_pub = ephemeral.public
    c = kdf1(CHAINING_KEY0, e_pub)
    h = hash(remote.hash0, e_pub)
    c, k = kdf2(c, ephemeral.dh(remote.public_obj))
    encrypted_static = aead_encrypt(k, 0, local.public_key, h)
    h = hash(h, encrypted_static)
    c, k = kdf2(c, remote.static_static)
    encrypted_timestamp = aead_encrypt(k, 0, timestamp, h)
    h = hash(h, encrypted_timestamp)
    message = bytearray(_INITIATION_SIZE)
    _INITIATION_BODY.pack_into(
        message, 0, MessageType.INITIATION, sender_index, e_pub, encrypted_static, encrypted_timestamp
    )
    state = InitiatorState(
        chaining_key=c,
        hash=h,
        ephemeral_private=ephemeral_private,
        sender_index=sender_index,
        ephemeral_key=ephemeral,
    )
    return message, state


def consume_initiation(
    local: LocalStatic,
    message: Initiation,
    lookup: Callable[[bytes], RemoteStatic | None],
) -> ResponderState | None:
    """Authenticate an initiation sent to ``local``; ``None`` on any failure (never raises on bad input).

    ``lookup`` maps the decrypted initiator static public key to that peer's :class:`RemoteStatic`
    (``None`` for an unknown peer). The caller still has to apply the timestamp and initiation-rate rules
    (module docstring) before it creates a response or changes any peer state.
    """
    e_pub = message.ephemeral
    c = kdf1(CHAINING_KEY0, e_pub)
    h = hash(local.hash0, e_pub)
    try:
        c, k = kdf2(c, local.key.dh(e_pub))
        static_public = aead_decrypt(k, 0, message.encrypted_static, h)
    except CryptoError:
        return None
    h = hash(h, message.encrypted_static)
    remote = lookup(static_public)
    if remote is None or remote.static_static is None:
        return None
    c, k = kdf2(c, remote.static_static)
    try:
        timestamp = aead_decrypt(k, 0, message.encrypted_timestamp, h)
    except CryptoError:
        return None
    h = hash(h, message.encrypted_timestamp)
    return ResponderState(
        remote_static_public=static_public,
        timestamp=timestamp,
        remote_index=message.sender,
        remote_ephemeral=e_pub,
        chaining_key=c,
        hash=h,
    )


def create_response(
    local: LocalStatic,
    remote: RemoteStatic,
    state: ResponderState,
    ephemeral_private: bytes,
    sender_index: int,
) -> tuple[bytearray, SessionKeys]:
    """Build the 92-byte response to a consumed initiation (macs zero) and derive the responder's keys.

    ``state`` is erased: one initiation gets one response (a retransmitted initiation has a new timestamp
    and is consumed anew). ``SessionKeys.is_initiator`` is False; the responder must not send with these
    keys before it has received a transport message under them (key confirmation, the Device's rule).
    """
    if not state.chaining_key:
        raise ValueError("responder state already used")
    ephemeral = PrivateKey(ephemeral_private)
    e_pub = ephemeral.public
    c = kdf1(state.chaining_key, e_pub)
    h = hash(state.hash, e_pub)
    c = kdf1(c, ephemeral.dh(state.remote_ephemeral))
    c = kdf1(c, ephemeral.dh(remote.public_obj))
    c, tau, k = kdf3(c, remote.preshared_key)
    h = hash(h, tau)
    encrypted_nothing = aead_encrypt(k, 0, _EMPTY, h)
    recv_key, send_key = kdf2(c, _EMPTY)
    state.erase()
    message = bytearray(_RESPONSE_SIZE)
    _RESPONSE_BODY.pack_into(
        message, 0, MessageType.RESPONSE, sender_index, state.remote_index, e_pub, encrypted_nothing
    )
    keys = SessionKeys(
        send_key=send_key,
        receive_key=recv_key,
        local_index=sender_index,
        remote_index=state.remote_index,
        is_initiator=False,
    )
    return message, keys


def consume_response(
    local: LocalStatic,
    remote: RemoteStatic,
    state: InitiatorState,
    message: Response,
) -> SessionKeys | None:
    """Authenticate a response to our initiation and derive the initiator's keys; ``None`` on any failure.

    On success ``state`` is erased. On failure it is left intact, so that a forged or corrupted response
    cannot stop the genuine one from completing the handshake.
    """
    if message.receiver != state.sender_index or not state.chaining_key:
        return None
    e_pub = message.ephemeral
    c = kdf1(state.chaining_key, e_pub)
    h = hash(state.hash, e_pub)
    ephemeral = state.ephemeral_key
    if ephemeral is None:
        ephemeral = PrivateKey(state.ephemeral_private)
    try:
        c = kdf1(c, ephemeral.dh(e_pub))
        c = kdf1(c, local.key.dh(e_pub))
    except CryptoError:
        return None
    c, tau, k = kdf3(c, remote.preshared_key)
    h = hash(h, tau)
    try:
        aead_decrypt(k, 0, message.encrypted_nothing, h)
    except CryptoError:
        return None
    send_key, recv_key = kdf2(c, _EMPTY)
    state.erase()
    return SessionKeys(
        send_key=send_key,
        receive_key=recv_key,
        local_index=state.sender_index,
        remote_index=message.sender,
        is_initiator=True,
    )
