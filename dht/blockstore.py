"""Where a node keeps its blocks: the key index every store shares, and blocks in memory.

Owns storage and the per-node view of it that repair needs: keys in ring order,
the keys inside an arc, and a cheap digest of an arc (count and XOR of keys) so two
nodes can compare ranges without listing them. Every block is verified against its
key when stored and again when read: a copy that fails is dropped, counted and
reported as missing, so an unverified byte never leaves the store. A store may have
a capacity in bytes of live blocks; past it a new block is refused with NodeFull.
Blocks in files (real nodes) are `dht.segmentstore.DiskBlockStore`; blocks in
memory (the simulator, tests, `chordcdn node` without --data) `MemoryBlockStore`.
"""

from __future__ import annotations

import logging
from typing import Iterable

from sortedcontainers import SortedList

from .errors import NodeFull
from .ids import IdSpace
from .merkle import BlockError, block_hash, verify_block

log = logging.getLogger(__name__)

Digest = tuple[int, int]  # (count, XOR of the keys as integers)


class BlockStore:
    """The ring-ordered key index shared by both back ends; subclasses hold bytes."""

    def __init__(self, space: IdSpace, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 0:
            raise ValueError("capacity must not be negative")
        self.space = space
        self.capacity = capacity
        self.used = 0  # bytes of live blocks
        self.corrupt_found = 0
        self._index: SortedList = SortedList()

    # -- back-end operations ------------------------------------------------------------

    def _read(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def _stored_size(self, key: bytes) -> int:
        raise NotImplementedError

    async def _write(self, key: bytes, data: bytes) -> None:
        raise NotImplementedError

    async def _erase(self, key: bytes) -> None:
        raise NotImplementedError

    # -- blocks ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def keys(self) -> list[bytes]:
        return list(self._index)

    def figures(self) -> dict[str, int]:
        """Fill level for `info` and metrics; capacity 0 means unlimited."""
        return {"blocks": len(self._index), "used": self.used, "capacity": self.capacity or 0}

    def stored_size(self, key: bytes) -> int:
        """Bytes of the block stored under `key` (0 when none is)."""
        return self._stored_size(key)

    def has_room(self, size: int) -> bool:
        return self.capacity is None or self.used + size <= self.capacity

    async def put(self, key: bytes, data: bytes) -> bool:
        """Verify and store a block; return False when an intact copy was already
        here (a corrupt one is replaced). NodeFull when a new block would take the
        store past its capacity."""
        verify_block(key, data)
        if key in self._index:
            existing = self._read(key)
            if existing is not None and block_hash(existing) == key:
                return False
            self.corrupt_found += 1
            await self.delete(key)
        if not self.has_room(len(data)):
            raise NodeFull(f"node full: {self.used:,} of {self.capacity:,} bytes used; refusing a block of {len(data):,} bytes")
        await self._write(key, data)
        self._index.add(key)
        self.used += len(data)
        return True

    def verified(self, key: bytes) -> bytes | None:
        """The block if an intact copy is here, else None (missing or corrupt),
        without waiting: the read path of `get_block`."""
        if key not in self._index:
            return None
        data = self._read(key)
        return data if data is not None and block_hash(data) == key else None

    async def get(self, key: bytes) -> bytes | None:
        """The verified block, or None; a copy that fails verification is removed."""
        data = self.verified(key)
        if data is not None or key not in self._index:
            return data
        self.corrupt_found += 1
        log.warning("dropping a corrupt or unreadable copy of block %s", key.hex()[:16])
        await self.delete(key)
        return None

    async def delete(self, key: bytes) -> None:
        if key in self._index:
            self.used -= self._stored_size(key)
            self._index.remove(key)
            await self._erase(key)

    # -- arcs of the ring -----------------------------------------------------------

    def _bounds(self, lo: int, hi: int) -> Iterable[tuple[bytes, bytes | None]]:
        """Byte-key bounds [first, last) of the keys whose positions lie in (lo, hi]."""
        shift = 256 - self.space.bits

        def edge(position: int) -> bytes:
            return (position << shift).to_bytes(32, "big") if position < self.space.size else b"\xff" * 33

        if lo < hi:
            return [(edge(lo + 1), edge(hi + 1))]
        return [(edge(lo + 1), None), (b"", edge(hi + 1))]  # wraps past zero (or the whole circle)

    def keys_in(self, lo: int, hi: int) -> list[bytes]:
        """Keys whose ring positions lie in the arc (lo, hi], in ring order from lo."""
        found: list[bytes] = []
        for first, last in self._bounds(lo, hi):
            found.extend(self._index.irange(first, last, inclusive=(True, False)) if last else self._index.irange(first))
        return found

    def digest(self, lo: int, hi: int) -> Digest:
        keys = self.keys_in(lo, hi)
        value = 0
        for key in keys:
            value ^= int.from_bytes(key, "big")
        return len(keys), value

    def digests(self, arcs: list[tuple[int, int]]) -> list[Digest]:
        return [self.digest(lo, hi) for lo, hi in arcs]


class MemoryBlockStore(BlockStore):
    """Blocks in a dict: lost when the node crashes, as the simulator wants."""

    def __init__(self, space: IdSpace, capacity: int | None = None) -> None:
        super().__init__(space, capacity)
        self.blocks: dict[bytes, bytes] = {}

    def _read(self, key: bytes) -> bytes | None:
        return self.blocks.get(key)

    def _stored_size(self, key: bytes) -> int:
        return len(self.blocks.get(key, b""))

    async def _write(self, key: bytes, data: bytes) -> None:
        self.blocks[key] = data

    async def _erase(self, key: bytes) -> None:
        self.blocks.pop(key, None)


__all__ = ["BlockError", "BlockStore", "MemoryBlockStore"]
