"""Block storage on the ring: a node's block RPCs, replication, repair and hand-off.

Owns where copies live. A block lives on successor(key) and the next r−1 nodes.
A put goes to the owner, which stores the block and forwards it to its r−1
successors, answering with how many copies were made. A periodic repair pass has
each node compare its own arc (predecessor, self] with its r−1 successors by
digests of sub-arcs, descending only into sub-arcs that differ, then pushing what a
successor lacks and pulling what it lacks itself (that is how a newly joined node
receives its keys). A node drops a copy it is no longer a replica for only after
every node of the key's replica set has confirmed holding it. A graceful leave
first hands every key to the next r successors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

import trio

from .blockstore import BlockStore
from .errors import BadRequest, ChordError, RemoteError, TransportError
from .ids import IdSpace, in_half_open
from .merkle import HASH_SIZE, MAX_BLOCK
from .node import ChordNode
from .routing import NodeRef

log = logging.getLogger(__name__)

MAX_LISTED_KEYS = 4096
HAS_BATCH = 512


@dataclass(frozen=True)
class StorageConfig:
    replicas: int = 3
    repair_interval: float = 30.0
    sync_parts: int = 16
    leaf_keys: int = 64
    max_depth: int = 12

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.repair_interval <= 0:
            raise ValueError("repair_interval must be positive")


@dataclass
class StorageStats:
    repair_pushed: int = 0
    repair_pulled: int = 0
    repair_bytes: int = 0
    dropped: int = 0


def _key_arg(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise BadRequest("a block key must be 32 bytes")
    return value


class BlockService:
    """The block side of one node."""

    def __init__(self, node: ChordNode, store: BlockStore, config: StorageConfig = StorageConfig()) -> None:
        self.node = node
        self.store = store
        self.config = config
        self.stats = StorageStats()
        for method, handler in {
            "put_block": self._on_put_block,
            "get_block": self._on_get_block,
            "has_blocks": self._on_has_blocks,
            "digests": self._on_digests,
            "list_keys": self._on_list_keys,
        }.items():
            node.register(method, handler)

    @property
    def space(self) -> IdSpace:
        return self.node.space

    def replica_targets(self) -> list[NodeRef]:
        """The successors that hold copies of what this node owns."""
        return self.node.routing.successors[: self.config.replicas - 1]

    # -- RPC handlers ----------------------------------------------------------------------

    async def _on_put_block(self, args: list[Any]) -> list[int]:
        if len(args) != 3 or not isinstance(args[1], bytes) or not isinstance(args[2], bool):
            raise BadRequest("put_block takes key, data (bytes) and replicate (bool)")
        key, data, replicate = _key_arg(args[0]), args[1], args[2]
        if len(data) > MAX_BLOCK:
            raise BadRequest(f"block of {len(data)} bytes exceeds the {MAX_BLOCK}-byte limit")
        await self.store.put(key, data)
        if not replicate:
            return [1, 1]
        targets = self.replica_targets()
        acks = 1
        async with trio.open_nursery() as nursery:
            for target in targets:
                async def copy(target: NodeRef = target) -> None:
                    nonlocal acks
                    try:
                        await self.node.call(target, "put_block", key, data, False)
                        acks += 1
                    except (TransportError, RemoteError) as exc:
                        log.info("replica of %s to %s failed: %s", key.hex()[:12], target.address, exc)
                nursery.start_soon(copy)
        return [acks, 1 + len(targets)]

    async def _on_get_block(self, args: list[Any]) -> bytes | None:
        if len(args) != 1:
            raise BadRequest("get_block takes a key")
        return await self.store.get(_key_arg(args[0]))

    def _on_has_blocks(self, args: list[Any]) -> list[bool]:
        if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) > HAS_BATCH:
            raise BadRequest(f"has_blocks takes a list of at most {HAS_BATCH} keys")
        return [_key_arg(key) in self.store for key in args[0]]

    def _arc_args(self, args: list[Any], count: int, method: str) -> list[Any]:
        if len(args) != count:
            raise BadRequest(f"{method} takes {count} arguments")
        try:
            for value in args[:2]:
                self.space.check(value)
        except ValueError as exc:
            raise BadRequest(f"{method}: {exc}") from None
        return args

    def _on_digests(self, args: list[Any]) -> list[list[int]]:
        lo, hi, parts = self._arc_args(args, 3, "digests")
        if not isinstance(parts, int) or not 1 <= parts <= 256:
            raise BadRequest("digests: parts must be 1..256")
        return [list(d) for d in self.store.digests(self.space.split_arc(lo, hi, parts))]

    def _on_list_keys(self, args: list[Any]) -> list[bytes]:
        lo, hi = self._arc_args(args, 2, "list_keys")
        keys = self.store.keys_in(lo, hi)
        if len(keys) > MAX_LISTED_KEYS:
            raise BadRequest(f"list_keys: {len(keys)} keys in that arc, more than {MAX_LISTED_KEYS}")
        return keys

    # -- maintenance -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Repair periodically (with the node's jitter) until cancelled."""
        task_status.started()
        spread = self.node.config.jitter
        while True:
            await trio.sleep(self.config.repair_interval * self.node.rng.uniform(1 - spread, 1 + spread))
            try:
                await self.repair()
            except (ChordError, ValueError) as exc:
                log.debug("%r: repair failed: %s", self.node, exc)

    async def repair(self) -> None:
        """One maintenance pass: bring our successors level with our own arc, then
        drop copies we are no longer a replica for."""
        predecessor = self.node.routing.predecessor
        if predecessor is not None:
            for target in self.replica_targets():
                try:
                    await self.sync_arc(target, predecessor.id, self.node.me.id, depth=0)
                except (TransportError, RemoteError) as exc:
                    log.info("%r: repair with %s failed: %s", self.node, target.address, exc)
        await self.drop_unneeded()

    async def sync_arc(self, peer: NodeRef, lo: int, hi: int, depth: int, pull: bool = True) -> None:
        """Make peer and us hold the same keys in (lo, hi], comparing digests of
        sub-arcs and descending only where they differ."""
        arcs = self.space.split_arc(lo, hi, self.config.sync_parts)
        theirs = await self.node.call(peer, "digests", lo, hi, self.config.sync_parts)
        for (a, b), mine, their in zip(arcs, self.store.digests(arcs), theirs):
            if list(mine) == list(their) or (not pull and mine[0] == 0):
                continue
            if mine[0] + their[0] <= self.config.leaf_keys or depth >= self.config.max_depth:
                await self._reconcile(peer, a, b, pull)
            else:
                await self.sync_arc(peer, a, b, depth + 1, pull)

    async def _reconcile(self, peer: NodeRef, lo: int, hi: int, pull: bool) -> None:
        theirs = set(await self.node.call(peer, "list_keys", lo, hi))
        mine = self.store.keys_in(lo, hi)
        for key in mine:
            if key not in theirs:
                await self._push(peer, key)
        if pull:
            for key in sorted(theirs.difference(mine)):
                data = await self.node.call(peer, "get_block", key)
                if isinstance(data, bytes) and await self.store.put(key, data):
                    self.stats.repair_pulled += 1
                    self.stats.repair_bytes += len(data)

    async def _push(self, peer: NodeRef, key: bytes) -> None:
        data = await self.store.get(key)
        if data is not None:
            await self.node.call(peer, "put_block", key, data, False)
            self.stats.repair_pushed += 1
            self.stats.repair_bytes += len(data)

    async def drop_unneeded(self) -> None:
        """Drop copies of keys whose replica set no longer includes us, once every
        member of that set has confirmed holding them (pushing to any that lack them)."""
        me, predecessor = self.node.me, self.node.routing.predecessor
        if predecessor is None:
            return
        foreign = self.store.keys_in(me.id, predecessor.id)  # everything outside our own arc
        index = 0
        while index < len(foreign):
            result = await self.node.lookup(self.space.position(foreign[index]))
            replicas = result.successors[: self.config.replicas]
            same_owner = lambda key: in_half_open(self.space.position(key), me.id, result.owner.id)  # noqa: E731
            group = list(takewhile(same_owner, foreign[index:])) or [foreign[index]]
            index += len(group)
            if any(node.id == me.id for node in replicas) or len(replicas) < self.config.replicas:
                continue
            try:
                await self._drop_if_confirmed(group, replicas)
            except (TransportError, RemoteError) as exc:  # keep the copies; the next pass retries
                log.info("%r: cannot confirm replicas of %d keys: %s", self.node, len(group), exc)

    async def _drop_if_confirmed(self, keys: list[bytes], replicas: list[NodeRef]) -> None:
        for start in range(0, len(keys), HAS_BATCH):
            batch = keys[start : start + HAS_BATCH]
            confirmed = [True] * len(batch)
            for node in replicas:
                held = await self.node.call(node, "has_blocks", batch)
                for position, (key, present) in enumerate(zip(batch, held)):
                    if not present:
                        await self._push(node, key)
                        confirmed[position] = False
            for key, ok in zip(batch, confirmed):
                if ok:
                    await self.store.delete(key)
                    self.stats.dropped += 1

    # -- leaving ---------------------------------------------------------------------------

    async def leave(self) -> None:
        """Hand every key to the next r live successors, then leave the ring."""
        me = self.node.me
        handed = 0
        for target in list(self.node.routing.successors):
            if handed == self.config.replicas:
                break
            try:
                await self.sync_arc(target, me.id, me.id, depth=0, pull=False)
                handed += 1
            except (TransportError, RemoteError) as exc:  # gone too: the next one down takes its place
                log.warning("%r: hand-off to %s failed: %s", self.node, target.address, exc)
        await self.node.leave()
