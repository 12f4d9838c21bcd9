"""The edge's own storage tiers: L1 in memory, L2 on disk.

Owns what a stored response is (`Stored`: its status, stored header fields,
size, age at arrival and when it arrived, the rules its fields set, and the CID it
had), what marks a URL whose responses vary (`Variants`), what is kept of a
representation that came in 206 pieces (`Partial`, in memory only), and where they live. L1 is a byte-budget LRU of whole bodies; L2 is diskcache with its own byte
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
from .pieces import Pieces
from .policy import ResponseRules, initial_age, response_rules, updated_fields
from .represent import BytesBody, FileBody

log = logging.getLogger(__name__)

MEMORY_OBJECT_SHARE = 8  # L1 keeps objects up to 1/8 of its budget


@dataclass(frozen=True)
class Stored:
    """A stored response: what is needed to answer from it and to judge its age."""

    status: int
    headers: list[tuple[str, str]]
    size: int
    response_time: float
    initial_age: float  # corrected_initial_age (RFC 9111 §4.2.3)
    rules: ResponseRules
    cid: str | None = None

    def age(self, now: float) -> float:
        """current_age (§4.2.3)."""
        return self.initial_age + max(0.0, now - self.response_time)

    def refreshed(self, request_time: float, response_time: float, not_modified: list[tuple[str, str]]) -> "Stored":
        """After a 304: the fields it updated, and the age and freshness they now
        give (§3.2, §4.3.4)."""
        merged = updated_fields(self.headers, not_modified)
        return replace(
            self,
            headers=merged,
            response_time=response_time,
            initial_age=initial_age(not_modified, request_time, response_time),
            rules=response_rules(self.status, merged),
        )


@dataclass(frozen=True)
class Variants:
    """What a tier keeps under a URL whose responses vary (§4.1): the request
    fields they vary on, and the keys their variants are stored under."""

    names: tuple[str, ...]
    keys: frozenset[str]


@dataclass(frozen=True)
class Partial:
    """A representation held in pieces: the fields of the latest piece (which
    replace the earlier ones, RFC 9111 §3.4), their age and rules, and the bytes."""

    stored: Stored
    pieces: Pieces


Entry = Stored | Variants
PARTIAL_KEY = "\x01pieces:"  # before a URL's key: its pieces (a URL's key starts with "/")


class MemoryTier:
    def __init__(self, budget: int) -> None:
        self.lru: ByteLRU[str, tuple[Entry, bytes]] = ByteLRU(budget)
        self.max_object = budget // MEMORY_OBJECT_SHARE

    def get(self, key: str) -> tuple[Entry, BytesBody] | None:
        entry = self.lru.get(key)
        if entry is None:
            return None
        stored, body = entry.value
        return stored, BytesBody(body)

    def fits(self, size: int) -> bool:
        return size <= self.max_object

    def put(self, key: str, stored: Entry, body: bytes) -> None:
        if self.fits(len(body)):
            self.lru.put(key, (stored, body), len(body) + 512)

    def update(self, key: str, stored: Stored) -> None:
        entry = self.lru.get(key)
        if entry is not None:
            self.lru.put(key, (stored, entry.value[1]), entry.size)

    def remove(self, key: str) -> bool:
        return self.lru.pop(key) is not None

    def get_partial(self, key: str) -> Partial | None:
        entry = self.lru.get(PARTIAL_KEY + key)
        return entry.value[0] if entry is not None else None  # type: ignore[return-value]

    def put_partial(self, key: str, partial: Partial) -> bool:
        """Keep the pieces, when they fit as an object would; False when not."""
        if not self.fits(partial.pieces.held):
            return False
        self.lru.put(PARTIAL_KEY + key, (partial, b""), partial.pieces.held + 512)  # type: ignore[arg-type]
        return True

    def remove_partial(self, key: str) -> bool:
        return self.remove(PARTIAL_KEY + key)


class DiskTier:
    """diskcache under `directory`: "m2:<key>" holds the entry, "b2:<key>" the body
    as a file of its own (the 2 is the format of `Stored`; older entries are
    ignored and age out)."""

    META, BODY = "m2:", "b2:"

    def __init__(self, directory: str, budget: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.cache = diskcache.Cache(directory, size_limit=budget, eviction_policy="least-recently-used", cull_limit=16)

    def get(self, key: str) -> tuple[Entry, FileBody | None] | None:
        entry = self.cache.get(self.META + key)
        if isinstance(entry, Variants):
            return entry, None
        if not isinstance(entry, Stored):
            return None
        handle = self.cache.get(self.BODY + key, read=True)
        if handle is None:
            return None  # the body was evicted first
        return entry, FileBody(handle, entry.size)

    async def put(self, key: str, stored: Entry, body: BinaryIO | None) -> None:
        def write() -> None:
            if body is not None:
                self.cache.set(self.BODY + key, body, read=True)
            self.cache.set(self.META + key, stored)

        try:
            await trio.to_thread.run_sync(write)
        except (OSError, diskcache.Timeout) as exc:
            log.warning("disk tier: could not store %s: %s", key, exc)

    async def update(self, key: str, stored: Stored) -> None:
        if (self.META + key) in self.cache:
            await trio.to_thread.run_sync(self.cache.set, self.META + key, stored)

    def remove(self, key: str) -> bool:
        found = bool(self.cache.delete(self.META + key))
        self.cache.delete(self.BODY + key)
        return found

    def close(self) -> None:
        self.cache.close()
