"""Injectable randomness, so that the core stays deterministic under test.

Ephemeral keys, session indices, cookie secrets, cookie nonces and retry jitter all come from a
:class:`RandomSource`. Production code uses :class:`SystemRandomSource` (the ``secrets`` module); the vectors and
the simulation harness pass their own.
"""

from __future__ import annotations

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
    """Cryptographically secure randomness from the operating system."""

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def index(self) -> int:
        return secrets.randbits(32)

    def jitter(self, max_seconds: float) -> float:
        return secrets.randbelow(1 << 20) / float(1 << 20) * max_seconds
