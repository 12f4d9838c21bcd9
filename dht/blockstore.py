"""Where a node keeps its blocks: in memory (simulation) or in diskcache (real nodes).

Owns storage and the per-node view of it that repair needs: keys in ring order,
the keys inside an arc, and a cheap digest of an arc (count and XOR of keys) so two
nodes can compare ranges without listing them. Every block is verified against its
key when stored and again when read: a copy that fails is dropped, counted and
reported as missing, so an unverified byte never leaves the store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import trio
from sortedcontainers import SortedList

from .ids import IdSpace
from .merkle import BlockError, block_hash, verify_block

log = logging.getLogger(__name__)

Digest = tuple[int, int]  # (count, XOR of the keys as integers)


class BlockStore:
    """The ring-ordered key index shared by both back ends; subclasses hold bytes."""

    def __init__(self, space: IdSpace) -> None:
        self.space = space
        self.corrupt_found = 0
        self._index: SortedList = SortedList()

    # -- back-end operations ------------------------------------------------------------

    def _read(self, key: bytes) -> bytes | None:
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

    async def put(self, key: bytes, data: bytes) -> bool:
        """Verify and store a block; return False when an intact copy was already
        here (a corrupt one is replaced)."""
        verify_block(key, data)
        if key in self._index:
            existing = self._read(key)
            if existing is not None and block_hash(existing) == key:
                return False
            self.corrupt_found += 1
        await self._write(key, data)
        self._index.add(key)
        return True

    async def get(self, key: bytes) -> bytes | None:
        """The verified block, or None; a copy that fails verification is removed."""
        if key not in self._index:
            return None
        data = self._read(key)
        if data is not None and block_hash(data) == key:
            return data
        self.corrupt_found += 1
        log.warning("dropping a corrupt or unreadable copy of block %s", key.hex()[:16])
        await self.delete(key)
        return None

    async def delete(self, key: bytes) -> None:
        if key in self._index:
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

    def __init__(self, space: IdSpace) -> None:
        super().__init__(space)
        self.blocks: dict[bytes, bytes] = {}

    def _read(self, key: bytes) -> bytes | None:
        return self.blocks.get(key)

    async def _write(self, key: bytes, data: bytes) -> None:
        self.blocks[key] = data

    async def _erase(self, key: bytes) -> None:
        self.blocks.pop(key, None)


class DiskBlockStore(BlockStore):
    """Blocks in a diskcache directory, never evicted; survives restarts.

    diskcache commits a value's row only after its file is written, so a crash in
    mid-write leaves no readable entry, and every read is verified regardless.
    Writes go to a worker thread (about 1 ms for 256 KiB); reads, served from the
    page cache in tens of microseconds, are made directly."""

    def __init__(self, space: IdSpace, directory: str | Path) -> None:
        import diskcache  # imported here: simulations never need it

        super().__init__(space)
        self.cache = diskcache.Cache(str(directory), eviction_policy="none", size_limit=2**62)
        self._index.update(key for key in self.cache.iterkeys() if isinstance(key, bytes) and len(key) == 32)

    def _read(self, key: bytes) -> bytes | None:
        value = self.cache.get(key)
        return value if isinstance(value, bytes) else None

    async def _write(self, key: bytes, data: bytes) -> None:
        await trio.to_thread.run_sync(self.cache.set, key, data)

    async def _erase(self, key: bytes) -> None:
        await trio.to_thread.run_sync(self.cache.delete, key)

    def close(self) -> None:
        self.cache.close()


__all__ = ["BlockError", "BlockStore", "DiskBlockStore", "MemoryBlockStore"]
