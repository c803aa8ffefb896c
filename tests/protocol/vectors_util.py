"""Helpers shared by the handshake tests: the vector files' parties as wgpy objects, and a scripted RNG."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from wgpy.protocol.noise import LocalStatic, RemoteStatic


def x(s: str) -> bytes:
    return bytes.fromhex(s)


@dataclass
class Parties:
    """Both ends of a vector case: each side's LocalStatic and its RemoteStatic view of the other side."""

    initiator: LocalStatic
    responder: LocalStatic
    psk: bytes
    # The initiator's view of the responder, and the responder's view of the initiator.
    responder_peer: RemoteStatic
    initiator_peer: RemoteStatic

    @classmethod
    def from_case(cls, case: dict[str, Any]) -> Parties:
        return cls.from_keys(
            x(case["initiator"]["static_private"]),
            x(case["responder"]["static_private"]),
            x(case["preshared_key"]),
        )

    @classmethod
    def from_keys(cls, initiator_private: bytes, responder_private: bytes, psk: bytes) -> Parties:
        initiator = LocalStatic.from_private(initiator_private)
        responder = LocalStatic.from_private(responder_private)
        return cls(
            initiator=initiator,
            responder=responder,
            psk=psk,
            responder_peer=RemoteStatic.create(initiator, responder.public_key, psk),
            initiator_peer=RemoteStatic.create(responder, initiator.public_key, psk),
        )

    def lookup(self, public: bytes) -> RemoteStatic | None:
        """The responder's peer table: it knows exactly the initiator."""
        return self.initiator_peer if public == self.initiator.public_key else None


class ScriptedRandom:
    """A RandomSource that hands out given byte strings in order (and fails loudly when it runs out)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks: deque[bytes] = deque(chunks)
        self.calls: list[int] = []

    def token_bytes(self, n: int) -> bytes:
        self.calls.append(n)
        chunk = self.chunks.popleft()
        assert len(chunk) == n, f"scripted chunk of {len(chunk)} bytes, {n} requested"
        return chunk

    def index(self) -> int:
        raise AssertionError("index() not scripted")

    def jitter(self, max_seconds: float) -> float:
        raise AssertionError("jitter() not scripted")
