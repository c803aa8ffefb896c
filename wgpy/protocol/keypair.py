"""Transport keypairs: one direction-pair of ChaCha20-Poly1305 keys born from a completed handshake.

A peer holds at most three (``next``, ``current``, ``previous``; see :mod:`wgpy.protocol.peer`). The AEAD objects are
built once per keypair, not per packet, because constructing them costs as much as encrypting a small packet.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgpy.protocol.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from wgpy.protocol.replay import ReplayWindow

#: Nonce of the transport AEAD: 4 zero bytes then the 64-bit little-endian counter.
NONCE = struct.Struct("<4xQ")


class Keypair:
    """Session keys plus the per-direction state that goes with them.

    ``send_valid`` lets a configuration change (a new private key) stop a keypair from sending without tearing down
    the receive side, as the reference implementations do when they "expire current keypairs".
    """

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "receive_aead",
        "remote_index",
        "replay",
        "send_aead",
        "send_counter",
        "send_valid",
    )

    def __init__(
        self,
        peer: object,
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
        created: float,
    ) -> None:
        self.peer = peer
        self.send_aead = ChaCha20Poly1305(send_key)
        self.receive_aead = ChaCha20Poly1305(receive_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.send_counter = 0
        self.send_valid = True
        self.replay = ReplayWindow()

    def __repr__(self) -> str:  # never show key material
        return (
            f"<Keypair local={self.local_index:#010x} remote={self.remote_index:#010x}"
            f" initiator={self.is_initiator}>"
        )

    def can_send(self, now: float) -> bool:
        return (
            self.send_valid
            and now - self.created < REJECT_AFTER_TIME
            and self.send_counter < REJECT_AFTER_MESSAGES
        )

    def can_receive(self, now: float) -> bool:
        return now - self.created < REJECT_AFTER_TIME
