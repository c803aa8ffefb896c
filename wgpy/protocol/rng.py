"""Injectable randomness, so that the core stays deterministic under test.

Ephemeral keys, session indices, cookie secrets, cookie nonces and retry jitter all come from a
:class:`RandomSource`. Production code uses :class:`SystemRandomSource` (the ``secrets`` module); the vectors and
the simulation harness pass their own.
"""

from __future__ import annotations

import random
import secrets
from typing import Protocol


class RandomSource(Protocol):
    def token_bytes(self, n: int) -> bytes: ...

    def index(self) -> int:
        """A uniformly random 32-bit session index."""
        ...

    def jitter(self, max_seconds: float) -> float:
        """A uniformly random delay in [0, max_seconds)."""
        ...


class SystemRandomSource:
    """Cryptographically secure randomness from the operating system, for everything an attacker must not guess.

    Retry jitter is the exception: it only keeps peers from retrying in lockstep, and nothing depends on it being
    unpredictable. It is drawn once per data packet sent on an idle tunnel (the new-handshake timer), where a
    ``getrandom`` system call or two (``secrets.randbelow`` rejects half its draws) was a visible share of a lone
    packet's latency, so it comes from a Mersenne Twister seeded from the operating system instead.
    """

    def __init__(self) -> None:
        self._jitter = random.Random(secrets.randbits(128))

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def index(self) -> int:
        return secrets.randbits(32)

    def jitter(self, max_seconds: float) -> float:
        return self._jitter.random() * max_seconds
