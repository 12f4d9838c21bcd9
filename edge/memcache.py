"""The edge's L1 cache: an in-memory LRU bounded by a byte budget.

Owns recency order, byte accounting and eviction. Values are opaque (a body,
a body plus headers, ...); the caller states each entry's size in bytes.
Pure: no I/O, no time, no threads; the caller serialises access.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Entry(Generic[V]):
    """A cached value and the bytes it is charged against the budget."""

    value: V
    size: int


class ByteLRU(Generic[K, V]):
    """Least-recently-used cache holding at most `budget` bytes of entries.

    A budget of 0 disables the cache: every put is refused.
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self._budget = budget_bytes
        self._entries: OrderedDict[K, Entry[V]] = OrderedDict()
        self._bytes_used = 0
        self._evictions = 0

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def bytes_used(self) -> int:
        return self._bytes_used

    @property
    def evictions(self) -> int:
        """Entries dropped to make room for others (not pops or replacements)."""
        return self._evictions

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Membership only; does not change recency."""
        return key in self._entries

    def get(self, key: K) -> Entry[V] | None:
        """The entry for `key`, now the most recently used; None on a miss."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: K, value: V, size: int) -> bool:
        """Store `value` as the most recent entry, evicting the least recent to fit.

        Returns False, storing nothing, when `size` exceeds the budget (or the
        budget is 0); any older entry under `key` is dropped then too, so a stale
        version is never served after a refused replacement.
        """
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.pop(key)
        if self._budget == 0 or size > self._budget:
            return False
        self._evict_until_free(size)
        self._entries[key] = Entry(value, size)
        self._bytes_used += size
        return True

    def pop(self, key: K) -> Entry[V] | None:
        """Remove and return the entry for `key`; None if absent."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes_used -= entry.size
        return entry

    def _evict_until_free(self, size: int) -> None:
        while self._bytes_used + size > self._budget:
            _, oldest = self._entries.popitem(last=False)
            self._bytes_used -= oldest.size
            self._evictions += 1
