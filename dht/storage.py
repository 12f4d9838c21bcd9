"""Block storage on the ring: a node's block RPCs, repair, proofs of possession and hand-off.

Owns where copies live. A block lives on successor(key) and the next r−1 nodes of
other processes (a process with virtual nodes holds one copy at most, and serves
all its positions from one store). A client stores it on each of them itself
(`DhtClient`), so every acknowledgement
comes from a holder the client reached and authenticated. A periodic repair pass
has each node compare its own arc (predecessor, self] with its r−1 successors by
digests of sub-arcs, descending only into sub-arcs that differ, then pushing what
a successor lacks and pulling what it lacks itself (that is how a newly joined
node receives its keys).

No copy is dropped on someone's word. A node drops a copy it is no longer a
replica for, and a leaving node hands off its copies, only once every node of the
new replica set has proved it holds the block: asked for the SHA-256 of a fresh
nonce and the block's bytes (`merkle.possession_proof`), which only a holder of
the bytes can compute. A node that cannot prove it is sent the block. A node with
a capacity refuses new blocks when full (NodeFull); repair then moves on. With a
scrub rate, a `dht.scrub.Scrubber` re-reads every copy in the background and drops
the ones that fail, and repair brings them back like any lost copy.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from itertools import takewhile
from typing import Any, Sequence

import trio

from . import messages
from .addresses import host_of
from .blockstore import BlockStore
from .errors import BadRequest, ChordError, RemoteError, TransportError
from .identity import PeerIdentity
from .ids import IdSpace, in_half_open
from .merkle import MAX_BLOCK, possession_proof
from .node import ChordNode
from .routing import NodeRef, distinct_hosts
from .scrub import Scrubber

log = logging.getLogger(__name__)

HAND_OFF_ROUNDS = 3  # prove, push what is missing, prove again


@dataclass(frozen=True)
class StorageConfig:
    replicas: int = 3
    repair_interval: float = 30.0
    sync_parts: int = 16
    leaf_keys: int = 64
    max_depth: int = 12
    scrub_rate: float = 0.0  # bytes per second re-read and re-hashed in the background (`dht.scrub`); 0: off

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.repair_interval <= 0:
            raise ValueError("repair_interval must be positive")
        if not (math.isfinite(self.scrub_rate) and self.scrub_rate >= 0):
            raise ValueError("scrub_rate must be a number of bytes per second, or 0 for off")
        if not 1 <= self.sync_parts <= messages.MAX_SYNC_PARTS:
            raise ValueError(f"sync_parts must be in 1..{messages.MAX_SYNC_PARTS}")


@dataclass
class StorageStats:
    repair_pushed: int = 0
    repair_pulled: int = 0
    repair_bytes: int = 0
    dropped: int = 0
    proofs_failed: int = 0


class BlockService:
    """The block side of one process: one store behind all its ring positions."""

    def __init__(self, node: ChordNode | Sequence[ChordNode], store: BlockStore, config: StorageConfig = StorageConfig()) -> None:
        """`node`: the process's node, or its virtual nodes, first one first."""
        self.positions = [node] if isinstance(node, ChordNode) else list(node)
        self.node = self.positions[0]
        self.store = store
        self.config = config
        self.stats = StorageStats()
        for position in self.positions:
            for method, handler in {
                "put_block": self._on_put_block,
                "get_block": self._on_get_block,
                "prove_blocks": self._on_prove_blocks,
                "digests": self._on_digests,
                "list_keys": self._on_list_keys,
            }.items():
                position.register(method, handler)
            position.info_extras.append(self.figures)
        self.scrubber = Scrubber(store, config.scrub_rate) if config.scrub_rate else None

    @property
    def space(self) -> IdSpace:
        return self.node.space

    def figures(self) -> dict[str, int]:
        scrubbed = self.scrubber.figures() if self.scrubber else {}
        repaired = {"repair_pushed": self.stats.repair_pushed, "repair_pulled": self.stats.repair_pulled}
        return {"replicas": self.config.replicas, **self.store.figures(), **scrubbed, **repaired}

    def replica_targets(self, position: ChordNode | None = None) -> list[NodeRef]:
        """The successors that hold copies of what `position` (the first by
        default) owns: the next r−1 other machines."""
        node = position or self.node
        return distinct_hosts(node.routing.successors, self.config.replicas - 1, besides=node.me.address)

    def _own_arcs(self) -> list[tuple[int, int]] | None:
        """(predecessor, position] for every position; None while one has no predecessor."""
        arcs = []
        for position in self.positions:
            predecessor = position.routing.predecessor
            if predecessor is None:
                return None
            arcs.append((predecessor.id, position.me.id))
        return arcs

    # -- RPC handlers ----------------------------------------------------------------------

    async def _on_put_block(self, caller: PeerIdentity, args: list[Any]) -> bool:
        key, data = messages.put_args(args, MAX_BLOCK)
        await self.store.put(key, data)  # verified against the key; NodeFull when full
        return True

    def _on_get_block(self, caller: PeerIdentity, args: list[Any]) -> Any:
        """Answered at once from an intact copy; only a corrupt one, which must be
        dropped, takes the slower way."""
        (key,) = messages.arguments(args, 1, "get_block")
        key = messages.block_key_arg(key, "get_block")
        data = self.store.verified(key)
        return self.store.get(key) if data is None and key in self.store else data

    async def _on_prove_blocks(self, caller: PeerIdentity, args: list[Any]) -> list[bytes | None]:
        nonce, keys = messages.prove_args(args)
        proofs: list[bytes | None] = []
        for key in keys:
            data = await self.store.get(key)
            proofs.append(None if data is None else possession_proof(nonce, data))
        return proofs

    def _on_digests(self, caller: PeerIdentity, args: list[Any]) -> list[list[int]]:
        lo, hi, parts = messages.digests_args(args, self.space)
        return [list(d) for d in self.store.digests(self.space.split_arc(lo, hi, parts))]

    def _on_list_keys(self, caller: PeerIdentity, args: list[Any]) -> list[bytes]:
        lo, hi = messages.arc_args(messages.arguments(args, 2, "list_keys"), self.space, "list_keys")
        keys = self.store.keys_in(lo, hi)
        if len(keys) > messages.MAX_LISTED_KEYS:
            raise BadRequest(f"list_keys: {len(keys)} keys in that arc, more than {messages.MAX_LISTED_KEYS}")
        return keys

    # -- maintenance -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Repair periodically (with the node's jitter), and scrub if asked to,
        until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.scrubber is not None:
                nursery.start_soon(self.scrubber.run)
            task_status.started()
            await self.node.repeat(self.config.repair_interval, self.repair, purpose="data")

    async def repair(self) -> None:
        """One maintenance pass: bring our successors level with each of our own
        arcs, then drop copies we are no longer a replica for."""
        for position in self.positions:
            predecessor = position.routing.predecessor
            if predecessor is None:
                continue
            for target in self.replica_targets(position):
                try:
                    await self.sync_arc(target, predecessor.id, position.me.id, depth=0)
                except ChordError as exc:  # unreachable, lying, full: the next pass tries again
                    log.info("%r: repair with %s failed: %s", position, target.address, exc)
        await self.drop_unneeded()

    async def sync_arc(self, peer: NodeRef, lo: int, hi: int, depth: int, pull: bool = True) -> None:
        """Make peer and us hold the same keys in (lo, hi], comparing digests of
        sub-arcs and descending only where they differ."""
        parts = self.config.sync_parts
        arcs = self.space.split_arc(lo, hi, parts)
        theirs = await self.node.ask(peer, "digests", lambda reply: messages.digests_reply(reply, len(arcs), self.space), lo, hi, parts)
        for (a, b), mine, their in zip(arcs, self.store.digests(arcs), theirs):
            if tuple(mine) == their or (not pull and mine[0] == 0):
                continue
            if mine[0] + their[0] <= self.config.leaf_keys or depth >= self.config.max_depth:
                await self._reconcile(peer, a, b, pull)
            else:
                await self.sync_arc(peer, a, b, depth + 1, pull)

    async def _reconcile(self, peer: NodeRef, lo: int, hi: int, pull: bool) -> None:
        theirs = set(await self.node.ask(peer, "list_keys", messages.keys_reply, lo, hi))
        mine = self.store.keys_in(lo, hi)
        for key in mine:
            if key not in theirs:
                await self._push(peer, key)
        if pull:
            for key in sorted(theirs.difference(mine)):
                data = await self.node.ask(peer, "get_block", messages.block_reply, key)
                if data is not None and await self.store.put(key, data):
                    self.stats.repair_pulled += 1
                    self.stats.repair_bytes += len(data)

    async def _push(self, peer: NodeRef, key: bytes) -> None:
        data = await self.store.get(key)
        if data is not None:
            await self.node.call(peer, "put_block", key, data)
            self.stats.repair_pushed += 1
            self.stats.repair_bytes += len(data)

    async def drop_unneeded(self) -> None:
        """Drop copies of keys whose replica set no longer includes us, once every
        member of that set has proved holding them (pushing to any that cannot)."""
        me = self.node.me
        foreign = self._foreign_keys()
        index = 0
        while index < len(foreign):
            result = await self.node.lookup(self.space.position(foreign[index]))
            replicas = distinct_hosts(result.successors, self.config.replicas)
            same_owner = lambda key: in_half_open(self.space.position(key), me.id, result.owner.id)  # noqa: E731
            group = list(takewhile(same_owner, foreign[index:])) or [foreign[index]]
            index += len(group)
            if any(host_of(node.address) == host_of(me.address) for node in replicas) or len(replicas) < self.config.replicas:
                continue
            try:
                await self._drop_if_proved(group, replicas)
            except ChordError as exc:  # keep the copies; the next pass retries
                log.info("%r: cannot confirm replicas of %d keys: %s", self.node, len(group), exc)

    def _foreign_keys(self) -> list[bytes]:
        """Keys held here outside every arc of ours, clockwise from our first
        position (none while an arc is unknown)."""
        arcs = self._own_arcs()
        if arcs is None:
            return []
        me = self.node.me.id
        if len(arcs) == 1:
            return self.store.keys_in(me, arcs[0][0])
        own = {key for lo, hi in arcs for key in self.store.keys_in(lo, hi)}
        return [key for key in self.store.keys_in(me, me) if key not in own]  # keys_in keeps ring order

    async def _drop_if_proved(self, keys: list[bytes], replicas: list[NodeRef]) -> None:
        for start in range(0, len(keys), messages.MAX_PROVE):
            for key in await self.proved_by_all(keys[start : start + messages.MAX_PROVE], replicas):
                await self.store.delete(key)
                self.stats.dropped += 1

    async def proved_by_all(self, keys: list[bytes], holders: list[NodeRef], drop_unreachable: bool = False) -> list[bytes]:
        """The keys (at most MAX_PROVE, all held here) that every holder proved it
        holds, answering a fresh challenge; a holder that cannot prove one is sent
        the block, and proves it on a later round. A holder that cannot be reached
        fails the whole call, or with `drop_unreachable` is taken off `holders`."""
        nonce = secrets.token_bytes(16)
        expected: dict[bytes, bytes] = {}
        for key in keys:
            data = await self.store.get(key)
            if data is not None:
                expected[key] = possession_proof(nonce, data)
        proved = set(expected)
        decode = lambda reply: messages.proofs_reply(reply, len(keys))  # noqa: E731
        for holder in list(holders):
            try:
                answers = await self.node.ask(holder, "prove_blocks", decode, nonce, keys)
            except TransportError:
                if not drop_unreachable:
                    raise
                log.warning("%r: %s is gone; it takes no hand-off", self.node, holder.address)
                holders.remove(holder)
                continue
            for key, answer in zip(keys, answers):
                if key in expected and answer != expected[key]:
                    self.stats.proofs_failed += answer is not None  # a wrong answer, not a plain miss
                    proved.discard(key)
                    await self._push(holder, key)
        return [key for key in keys if key in proved] if holders else []

    # -- leaving ---------------------------------------------------------------------------

    async def leave(self) -> None:
        """Hand every key to the next r live machines after it among our positions'
        successors, wait until each has proved holding every key, then leave the
        ring at every position."""
        for lo, position in self._leave_segments():
            holders = await self._hand_off(position, lo)
            unproved = await self._prove_hand_off(holders, lo, position.me.id)
            if unproved:
                log.warning("%r: leaving with %d blocks whose new holders did not prove them", position, unproved)
        for position in self.positions:
            await position.leave()

    def _leave_segments(self) -> list[tuple[int, ChordNode]]:
        """Each position with the arc (previous position of ours, it] whose keys its
        successors take over: together the whole ring."""
        ordered = sorted(self.positions, key=lambda position: position.me.id)
        return [(ordered[index - 1].me.id, position) for index, position in enumerate(ordered)]

    async def _hand_off(self, position: ChordNode, lo: int) -> list[NodeRef]:
        """Push the keys of (lo, position] to the first r machines after `position`
        that take them; those are the new holders."""
        holders: list[NodeRef] = []
        for target in distinct_hosts(position.routing.successors, besides=position.me.address):
            if len(holders) == self.config.replicas:
                break
            try:
                await self.sync_arc(target, lo, position.me.id, depth=0, pull=False)
                holders.append(target)
            except ChordError as exc:  # gone too: the next one down takes its place
                log.warning("%r: hand-off to %s failed: %s", position, target.address, exc)
        return holders

    async def _prove_hand_off(self, holders: list[NodeRef], lo: int, hi: int) -> int:
        """Challenge the new holders for every key of (lo, hi] until all are proved
        or the rounds run out; return how many keys stayed unproved."""
        pending = self.store.keys_in(lo, hi)
        for _ in range(HAND_OFF_ROUNDS):
            if not pending or not holders:
                break
            still: list[bytes] = []
            for start in range(0, len(pending), messages.MAX_PROVE):
                batch = pending[start : start + messages.MAX_PROVE]
                try:
                    proved = set(await self.proved_by_all(batch, holders, drop_unreachable=True))
                except (TransportError, RemoteError) as exc:  # a push to a holder failed
                    log.warning("%r: hand-off proofs failed: %s", self.node, exc)
                    proved = set()
                still.extend(key for key in batch if key not in proved)
            pending = still
        return len(pending)
