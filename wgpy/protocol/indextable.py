"""Random 32-bit session indices, mapping a receiver index on the wire to a handshake or a keypair.

Indices are random rather than sequential so that they reveal nothing about how many sessions exist (paper §5.4.2).
A handshake's index is handed over to the keypair it produces, as in Linux's ``wg_index_hashtable_replace``, so the
peer's first transport message finds the new keypair under the index it already knows.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from wgpy.protocol.rng import RandomSource

T = TypeVar("T")


class IndexTable(Generic[T]):
    __slots__ = ("_entries", "_rng")

    def __init__(self, rng: RandomSource) -> None:
        self._entries: dict[int, T] = {}
        self._rng = rng

    def allocate(self, value: T) -> int:
        """Pick a fresh random index not in use and bind ``value`` to it."""
        while True:
            index = self._rng.index() & 0xFFFFFFFF
            if index not in self._entries:
                self._entries[index] = value
                return index

    def replace(self, index: int, value: T) -> None:
        self._entries[index] = value

    def get(self, index: int) -> T | None:
        return self._entries.get(index)

    def remove(self, index: int, value: T | None = None) -> None:
        """Free ``index``; with ``value``, only if it still points at that value (it may have been handed over)."""
        if value is None or self._entries.get(index) is value:
            self._entries.pop(index, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, index: int) -> bool:
        return index in self._entries
