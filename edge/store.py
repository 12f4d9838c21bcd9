"""The edge's cache as one store over its tiers, memory then disk.

Owns the bookkeeping that spans tiers: finding the stored response a request
selects (following a URL's `Variants` marker to the variant its Vary fields pick,
RFC 9111 §4.1), storing a response together with that marker, updating a stored
response after a 304, and removing a URL with every variant it has and any
pieces of it (for invalidation and purge). A disk hit is promoted to memory when it fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from .policy import RequestHeaders
from .vary import secondary_key, vary_names
from .represent import BodySource
from .spool import Spool
from .tiers import DiskTier, Entry, MemoryTier, Stored, Variants


@dataclass(frozen=True)
class Found:
    key: str  # where the response is stored: the URL's key, or its variant's
    tier: str  # "memory" or "disk"
    stored: Stored
    body: BodySource


def variant_key(key: str, names: tuple[str, ...], request: RequestHeaders) -> str:
    return key + "\x00" + secondary_key(names, request)


class CacheStore:
    def __init__(self, memory: MemoryTier, disk: DiskTier | None, nursery: trio.Nursery) -> None:
        self.memory = memory
        self.disk = disk
        self.nursery = nursery  # for disk writes that nobody waits for

    def lookup(self, key: str, request: RequestHeaders) -> Found | None:
        """The stored response for a request to `key`, following Vary."""
        found = self._get(key)
        if found is None:
            return None
        entry = found[1]
        if isinstance(entry, Variants):
            key = variant_key(key, entry.names, request)
            found = self._get(key)
            if found is None or not isinstance(found[1], Stored):
                return None
        tier, stored, body = found
        assert isinstance(stored, Stored) and body is not None
        return Found(key, tier, stored, body)

    def _get(self, key: str, promote: bool = True) -> tuple[str, Entry, BodySource | None] | None:
        hit = self.memory.get(key)
        if hit is not None:
            return "memory", hit[0], hit[1]
        if self.disk is None:
            return None
        on_disk = self.disk.get(key)
        if on_disk is None:
            return None
        entry, body = on_disk
        if promote and isinstance(entry, Stored) and body is not None and self.memory.fits(entry.size):
            self.memory.put(key, entry, os.pread(body.fd, entry.size, 0))
        elif promote and isinstance(entry, Variants):
            self.memory.put(key, entry, b"")
        return "disk", entry, body

    async def put(self, key: str, request: RequestHeaders, stored: Stored, spool: Spool) -> None:
        """Store a complete response to a request for `key`; a response with Vary
        goes under its variant's key, beside the other variants of the URL."""
        names = vary_names(stored.headers)
        current = self._get(key, promote=False)
        if names:
            target = variant_key(key, names, request)
            known = current[1] if current is not None else None
            keys = known.keys if isinstance(known, Variants) and known.names == names else frozenset()
            if known is not None and not keys:
                self.remove(key)  # a plain response, or variants on other fields: superseded
            await self._put_entry(key, Variants(names, keys | {target}), None)
        else:
            target = key
            if current is not None and isinstance(current[1], Variants):
                self.remove(key)
        self.memory.remove_partial(key)  # the whole representation supersedes any pieces
        await self._put_entry(target, stored, spool)

    async def _put_entry(self, key: str, entry: Entry, spool: Spool | None) -> None:
        if spool is None:
            self.memory.put(key, entry, b"")
        elif self.memory.fits(spool.size):
            self.memory.put(key, entry, spool.read_all())
        if self.disk is not None:
            if spool is None:
                await self.disk.put(key, entry, None)
                return
            with os.fdopen(os.dup(spool.fileno()), "rb") as body:
                await self.disk.put(key, entry, body)

    def update(self, key: str, stored: Stored) -> None:
        """Replace a stored response's metadata (after a 304), keeping its body."""
        self.memory.update(key, stored)
        if self.disk is not None:
            self.nursery.start_soon(self.disk.update, key, stored)

    def remove(self, key: str) -> int:
        """Remove the URL's stored responses, every variant included, from every
        tier; the number of responses removed."""
        found = self._get(key, promote=False)
        keys = [key]
        removed = int(self.memory.remove_partial(key))
        if found is not None and isinstance(found[1], Variants):
            keys += sorted(found[1].keys)
        for each in keys:
            in_memory = self.memory.remove(each)
            on_disk = self.disk.remove(each) if self.disk is not None else False
            removed += in_memory or on_disk
        if found is not None and isinstance(found[1], Variants):
            removed -= 1  # the marker is not a response
        return max(0, removed)
