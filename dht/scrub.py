"""Background scrubbing: re-read and re-hash every stored block at a bounded rate.

Owns finding silent rot. A copy that no client reads (the second or third
replica) is otherwise never checked, so r copies on paper could be one in fact.
The scrubber walks the store's keys in ring order, round after round, reading
each block and checking it against its key (`BlockStore.get`, which drops a copy
that fails and counts it); block repair (`dht.storage`) then finds the copy
missing and brings it back from another holder, as for any lost copy. It reads
at most `rate` bytes per second, so it costs the node's clients a bounded share
of the disk; like ZFS and Ceph scrubs, it trades speed of detection for that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from .blockstore import BlockStore

log = logging.getLogger(__name__)

DEFAULT_SCRUB_RATE = 8 << 20  # bytes per second
IDLE_PAUSE = 10.0  # seconds between rounds over an empty store


@dataclass
class ScrubStats:
    scrubbed: int = 0  # blocks read and checked
    bad: int = 0  # copies that failed their check and were dropped


class Scrubber:
    """Checks `store`'s blocks at most `rate` bytes per second."""

    def __init__(self, store: BlockStore, rate: float = DEFAULT_SCRUB_RATE) -> None:
        if not rate > 0:
            raise ValueError("the scrub rate must be a positive number of bytes per second")
        self.store, self.rate = store, rate
        self.stats = ScrubStats()

    def figures(self) -> dict[str, int]:
        return {"scrubbed": self.stats.scrubbed, "scrub_bad": self.stats.bad}

    async def run(self) -> None:
        """Scrub round after round until cancelled."""
        while True:
            if not await self.scrub_round():
                await trio.sleep(IDLE_PAUSE)

    async def scrub_round(self) -> int:
        """Check every block held when the round starts; return how many were checked."""
        checked = 0
        for key in self.store.keys():
            if key not in self.store:
                continue  # dropped or handed off since the round began
            size = self.store.stored_size(key)
            intact = await self.store.get(key) is not None
            self.stats.scrubbed += 1
            checked += 1
            if not intact:
                self.stats.bad += 1
                log.warning("scrub: the copy of block %s was damaged; dropped for repair to restore", key.hex()[:16])
            await trio.sleep(size / self.rate)
        return checked
