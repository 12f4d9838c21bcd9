"""The edge's own storage tiers: L1 in memory, L2 on disk.

Owns what a stored response is (`Stored`: its end-to-end header fields, size,
when it was received and how long it stays fresh, and the CID it had) and where it
lives. L1 is a byte-budget LRU of whole bodies; L2 is diskcache with its own byte
budget and LRU eviction, and it survives a restart. Disk writes run in a worker
thread (a 256 KiB set costs about a millisecond); reads come from the page cache
and run inline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import BinaryIO

import diskcache
import trio

from .memcache import ByteLRU
from .policy import freshness
from .represent import BytesBody, FileBody

log = logging.getLogger(__name__)

MEMORY_OBJECT_SHARE = 8  # L1 keeps objects up to 1/8 of its budget


@dataclass(frozen=True)
class Stored:
    """A stored response: what is needed to answer from it and to judge its age."""

    headers: list[tuple[str, str]]
    size: int
    received_at: float
    lifetime: float
    must_revalidate: bool = False
    cid: str | None = None

    def fresh(self, now: float) -> bool:
        return now - self.received_at < self.lifetime

    def refreshed(self, now: float, headers: list[tuple[str, str]]) -> "Stored":
        """After a 304: new age, the header fields the 304 updated, and the
        freshness they now give (RFC 9111 §4.3.4)."""
        updated = {k.lower() for k, _ in headers}
        merged = [(k, v) for k, v in self.headers if k.lower() not in updated] + headers
        return replace(self, headers=merged, received_at=now, lifetime=freshness(merged).lifetime)


class MemoryTier:
    def __init__(self, budget: int) -> None:
        self.lru: ByteLRU[str, tuple[Stored, bytes]] = ByteLRU(budget)
        self.max_object = budget // MEMORY_OBJECT_SHARE

    def get(self, key: str) -> tuple[Stored, BytesBody] | None:
        entry = self.lru.get(key)
        if entry is None:
            return None
        stored, body = entry.value
        return stored, BytesBody(body)

    def fits(self, size: int) -> bool:
        return size <= self.max_object

    def put(self, key: str, stored: Stored, body: bytes) -> None:
        if self.fits(len(body)):
            self.lru.put(key, (stored, body), len(body) + 512)

    def update(self, key: str, stored: Stored) -> None:
        entry = self.lru.get(key)
        if entry is not None:
            self.lru.put(key, (stored, entry.value[1]), entry.size)

    def remove(self, key: str) -> None:
        self.lru.pop(key)


class DiskTier:
    """diskcache under `directory`: "m:<key>" holds the Stored, "b:<key>" the body
    as a file of its own."""

    def __init__(self, directory: str, budget: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.cache = diskcache.Cache(directory, size_limit=budget, eviction_policy="least-recently-used", cull_limit=16)

    def get(self, key: str) -> tuple[Stored, FileBody] | None:
        stored = self.cache.get("m:" + key)
        if not isinstance(stored, Stored):
            return None
        handle = self.cache.get("b:" + key, read=True)
        if handle is None:
            return None  # the body was evicted first
        return stored, FileBody(handle, stored.size)

    async def put(self, key: str, stored: Stored, body: BinaryIO) -> None:
        def write() -> None:
            self.cache.set("b:" + key, body, read=True)
            self.cache.set("m:" + key, stored)

        try:
            await trio.to_thread.run_sync(write)
        except (OSError, diskcache.Timeout) as exc:
            log.warning("disk tier: could not store %s: %s", key, exc)

    async def update(self, key: str, stored: Stored) -> None:
        if ("m:" + key) in self.cache:
            await trio.to_thread.run_sync(self.cache.set, "m:" + key, stored)

    def remove(self, key: str) -> None:
        self.cache.delete("m:" + key)
        self.cache.delete("b:" + key)

    def close(self) -> None:
        self.cache.close()

