"""Putting files into the ring and reading them back, verified.

Owns the reader's and writer's side of block storage. A put streams the file
through a DagBuilder and stores each block on every node of its replica set (the
owner and the next r−1 nodes of other processes, found by a lookup of the client's own, or by one
of its lookups of the last WRITE_LOOKUP_AGE seconds whose answer covers the key),
a bounded number of blocks at once; a block counts as stored only when enough of those
nodes, each reached by its own authenticated link, acknowledge that they stored
and verified it. A read fetches the root, then only the inner blocks and leaves
that the byte range covers, a bounded number ahead, and hands the bytes to a sink
in order. Each block comes from the first replica that returns it intact: a
timeout, a miss or a bad hash moves on to the next one, so no unverified byte
reaches the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, BinaryIO, Callable

import trio

from . import messages
from .addresses import host_of
from .errors import ChordError, RemoteError, TransportError
from .ids import IdSpace
from .lookup import ReplicaCache, StartingPoints, in_ring_order, iterate
from .merkle import (
    DEFAULT_CHUNK,
    DEFAULT_FANOUT,
    BlockError,
    DagBuilder,
    DagNode,
    block_hash,
    check_leaf,
    child_spans,
    decode_node,
    Span,
    parse_cid,
    verify_block,
)
from .messages import LookupResult
from .node import ChordNode, remote_step
from .routing import NodeRef, distinct_hosts
from .transport import Transport

log = logging.getLogger(__name__)

Locate = Callable[[int], Awaitable[LookupResult]]
KnownMembers = Callable[[], Awaitable[set[str]]]  # machines (`host_of`) of the entry node and the nodes it knows follow it
Call = Callable[..., Awaitable[Any]]
Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int], None]
LeafSource = Callable[[int, int], Awaitable[bytes]]  # (offset in the file, size) → the leaf's bytes, from elsewhere


class BlockNotFound(ChordError):
    """No replica returned an intact copy of a block."""


class PutFailed(ChordError):
    """A block could not be stored with enough copies."""


DEFAULT_REPLICAS = 3
PUT_ROUNDS = 2  # a second lookup and fan-out for the copies the first one missed
PUT_RETRY_DELAY = 0.5  # seconds before that second round: routing may settle meanwhile
WRITE_LOOKUP_AGE = 1.0  # seconds a lookup answer places puts (reads trust it for ReplicaCache.ttl)


class BadRange(ChordError, ValueError):
    """A byte range that does not fit the file."""


@dataclass
class ClientStats:
    bad_copies: int = 0
    misses: int = 0
    failovers: int = 0


class DhtClient:
    """Files in, CIDs out, and back; over any node's `call` and a way to locate keys."""

    def __init__(
        self,
        call: Call,
        locate: Locate,
        space: IdSpace,
        *,
        replicas: int = DEFAULT_REPLICAS,
        write_quorum: int | None = None,
        window: int = 16,
        read_attempts: int = 4,
        known_members: KnownMembers | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        if write_quorum is not None and not 1 <= write_quorum <= replicas:
            raise ValueError(f"the write quorum must be in 1..{replicas} (the replica count), got {write_quorum}")
        self.call = call
        self.locate = locate
        self.space = space
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.known_members = known_members
        self.lookups = ReplicaCache()
        self.window = window
        self.read_attempts = read_attempts
        self.stats = ClientStats()

    @classmethod
    def for_node(cls, node: ChordNode, **options: Any) -> "DhtClient":
        """A client inside a node: it locates keys with the node's own lookups."""

        async def known_members() -> set[str]:
            return {host_of(member.address) for member in (node.me, *node.routing.successors)}

        return cls(node.call, node.lookup, node.space, known_members=known_members, **options)

    @classmethod
    async def via(
        cls, transport: Transport, address: str, timeout: float = 10.0, *, info: messages.NodeInfo | None = None, **options: Any
    ) -> "DhtClient":
        """A client outside the ring. It enters the ring at the node at `address`
        and drives every lookup itself, one step per node, so that no single node's
        word decides where a block goes; each node is called with the ID its
        certificate must prove. The replica count is the entry node's. `info` is
        the entry node's own answer to `info`, when the caller already asked it."""
        if info is None:
            info = messages.NodeInfo.from_wire(await transport.call(address, "info", [], timeout=timeout))
        space, entry = IdSpace(info.bits), info.me
        step_timeout = min(timeout, 2.0)

        async def call(node: NodeRef, method: str, *args: Any) -> Any:
            return await transport.call(node.address, method, list(args), timeout=timeout, node_id=node.id)

        async def step_call(node: NodeRef, method: str, *args: Any) -> Any:
            return await transport.call(node.address, method, list(args), timeout=step_timeout, node_id=node.id)

        async def step(hop: NodeRef, key: int, dead: frozenset[int]) -> tuple[bool, list[NodeRef]]:
            return await remote_step(step_call, space, hop, key, dead)

        async def arc(node: NodeRef, patient: bool) -> tuple[NodeRef | None, list[NodeRef]]:
            return messages.arc_reply(await (call if patient else step_call)(node, "arc"), space)

        starts = StartingPoints(space, entry)

        async def locate(position: int) -> LookupResult:
            result = await iterate(space, position, starts.before(position), step, timeout, on_dead=starts.forget, arc=arc)
            starts.learn([*result.path, *result.successors])
            return result

        async def known_members() -> set[str]:
            now = messages.NodeInfo.from_wire(await call(entry, "info"))
            return {host_of(member.address) for member in (now.me, *now.successors)}

        options.setdefault("replicas", info.store.get("replicas", DEFAULT_REPLICAS))
        return cls(call, locate, space, known_members=known_members, **options)

    # -- blocks -------------------------------------------------------------------------------

    async def put_block(self, data: bytes) -> bytes:
        """Store one block on each node of its replica set; return its key once
        enough of them (all r, or the write quorum) acknowledge. Only nodes of the
        replica set this client's own lookup gives count."""
        key = block_hash(data)
        position = self.space.position(key)
        stored: set[int] = set()
        failures: dict[str, str] = {}
        acknowledged = needed = 0
        for attempt in range(PUT_ROUNDS):
            if attempt:
                await trio.sleep(PUT_RETRY_DELAY)
            try:
                replica_set = await self.replica_set(position)
            except PutFailed as exc:
                failures["lookup"] = str(exc)
                continue
            needed = min(self.write_quorum or self.replicas, len(replica_set))
            missing = [node for node in replica_set if node.id not in stored]
            async with trio.open_nursery() as nursery:
                for node in missing:
                    nursery.start_soon(self._store_copy, node, key, data, stored, failures)
            acknowledged = sum(node.id in stored for node in replica_set)
            if acknowledged >= needed:
                return key
            self.lookups.drop(position)  # the next round looks up afresh
        reasons = "; ".join(f"{address}: {why}" for address, why in failures.items())
        raise PutFailed(f"block {key.hex()[:16]}…: only {acknowledged} of {needed} copies acknowledged" + (f" ({reasons})" if reasons else ""))

    async def replica_set(self, position: int) -> list[NodeRef]:
        """The owner of `position` and the r−1 nodes after it on other machines
        (virtual nodes of one process count once), in ring order. Fewer than r
        only in a ring of fewer than r machines: the entry node must know of no
        machine outside the set;
        otherwise PutFailed, so that a lookup cut short (by a liar, or successor
        lists still filling up) never lowers the number of copies."""
        successors = self.lookups.replicas(position, trio.current_time(), WRITE_LOOKUP_AGE)
        if successors is None:
            result = await self.locate(position)
            self.lookups.remember(result, trio.current_time())
            successors = result.successors
        nodes = distinct_hosts(in_ring_order(self.space, position, successors), self.replicas)
        if len(nodes) < self.replicas:
            known = await self.known_members() if self.known_members else {""}
            if not known <= {host_of(node.address) for node in nodes}:
                raise PutFailed(
                    f"the lookup found only {len(nodes)} of {self.replicas} replicas, but the ring has more nodes; try again"
                )
        return nodes

    async def _store_copy(self, node: NodeRef, key: bytes, data: bytes, stored: set[int], failures: dict[str, str]) -> None:
        try:
            acknowledged = messages.flag_reply(await self.call(node, "put_block", key, data), "put_block")
        except RemoteError as exc:
            failures[node.address] = exc.message if exc.kind == "NodeFull" else str(exc)
            return
        except TransportError as exc:
            failures[node.address] = str(exc)
            self.stats.failovers += 1
            return
        if acknowledged:
            stored.add(node.id)

    async def get_block(self, key: bytes) -> bytes:
        """The block under key from the first replica that has an intact copy; the
        replicas from a recent lookup covering the key when there is one (a block is
        verified by its hash, so a stale answer can only miss), else a fresh lookup."""
        position = self.space.position(key)
        cached = self.lookups.replicas(position, trio.current_time())
        if cached is not None:
            data = await self._first_intact(key, cached)
            if data is not None:
                return data
            self.lookups.drop(position)
        result = await self.locate(position)
        self.lookups.remember(result, trio.current_time())
        data = await self._first_intact(key, result.successors)
        if data is None:
            raise BlockNotFound(f"block {key.hex()} was not found on {min(len(result.successors), self.read_attempts)} replicas")
        return data

    async def _first_intact(self, key: bytes, nodes: list[NodeRef]) -> bytes | None:
        for node in nodes[: self.read_attempts]:
            try:
                data = messages.block_reply(await self.call(node, "get_block", key))
            except (TransportError, RemoteError) as exc:
                log.info("block %s from %s failed: %s", key.hex()[:12], node.address, exc)
                self.stats.failovers += 1
                continue
            if not isinstance(data, bytes):
                self.stats.misses += 1
                continue
            if block_hash(data) != key:
                self.stats.bad_copies += 1
                log.warning("%s sent a corrupt copy of block %s; trying the next replica", node.address, key.hex()[:12])
                continue
            return data
        return None

    # -- files ----------------------------------------------------------------------------------

    async def put_file(
        self, source: BinaryIO, chunk_size: int = DEFAULT_CHUNK, fanout: int = DEFAULT_FANOUT, progress: Progress | None = None
    ) -> str:
        """Stream a file into the ring; return its CID."""
        builder = DagBuilder(chunk_size, fanout)
        failures: list[ChordError] = []
        limiter = trio.Semaphore(self.window)

        async def store(block: bytes, leaf_bytes: int) -> None:
            try:
                await self.put_block(block)
                if progress and leaf_bytes:
                    progress(leaf_bytes)
            except ChordError as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
            finally:
                limiter.release()

        async with trio.open_nursery() as nursery:
            while chunk := source.read(chunk_size):
                for index, block in enumerate(builder.add_chunk(chunk)):
                    await limiter.acquire()
                    nursery.start_soon(store, block, len(chunk) if index == 0 else 0)
            blocks, root = builder.finish()
            for block in blocks:
                await limiter.acquire()
                nursery.start_soon(store, block, 0)
        if failures:
            raise failures[0]
        return root.hex()

    async def stat(self, cid: str) -> DagNode:
        """The root of a file: its size and chunk size."""
        return decode_node(await self.get_block(parse_cid(cid)))

    async def read(self, cid: str, sink: Sink, start: int = 0, end: int | None = None, fallback: LeafSource | None = None) -> int:
        """Send bytes [start, end) of the file (all of it by default) to sink, in
        order; return how many were sent. A leaf that no replica returns intact is
        asked of `fallback` (its offset in the file and its size), when one is
        given, and used only if it hashes to the leaf's key."""
        root = await self.stat(cid)
        end = root.size if end is None else end
        if not 0 <= start <= end <= root.size:
            raise BadRange(f"range {start}-{end} does not fit a file of {root.size} bytes")
        send, receive = trio.open_memory_channel[_Pending](self.window)
        failures: list[ChordError] = []
        sent = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetch_leaves, root, start, end, send, nursery, fallback)
            async with receive:
                async for pending in receive:
                    await pending.done.wait()
                    if pending.error is not None:
                        failures.append(pending.error)
                        nursery.cancel_scope.cancel()
                        break
                    await sink(pending.data)
                    sent += len(pending.data)
        if failures:
            raise failures[0]
        return sent

    async def _fetch_leaves(
        self, root: DagNode, start: int, end: int, send: trio.MemorySendChannel["_Pending"], nursery: trio.Nursery, fallback: LeafSource | None
    ) -> None:
        """Walk the DAG over [start, end), starting a fetch for each leaf it needs
        and queueing it in order; the channel's capacity bounds how far ahead."""
        async with send:
            try:
                await self._walk(root, 0, start, end, send, nursery, fallback)
            except ChordError as exc:
                failed = _Pending()
                failed.fail(exc)
                await send.send(failed)

    async def _walk(
        self, node: DagNode, base: int, start: int, end: int, send: trio.MemorySendChannel["_Pending"], nursery: trio.Nursery,
        fallback: LeafSource | None,
    ) -> None:
        for span in child_spans(node, start, end):
            offset = base + span.offset
            if node.height > 1:
                child = decode_node(await self.get_block(span.child.hash), span.child.size, node.height - 1)
                await self._walk(child, offset, span.start, span.end, send, nursery, fallback)
                continue
            pending = _Pending()
            nursery.start_soon(self._fetch_leaf, span, offset, pending, fallback)
            await send.send(pending)

    async def _fetch_leaf(self, span: Span, offset: int, pending: "_Pending", fallback: LeafSource | None) -> None:
        key, size = span.child.hash, span.child.size
        try:
            try:
                data = check_leaf(await self.get_block(key), size)
            except ChordError as exc:
                if fallback is None:
                    raise
                log.info("leaf %s… at offset %d: %s; asking the fallback", key.hex()[:16], offset, exc)
                data = check_leaf(verify_block(key, await fallback(offset, size)), size)
        except ChordError as exc:
            pending.fail(exc)
            return
        pending.finish(data[span.start : span.end] if (span.start, span.end) != (0, size) else data)


class _Pending:
    """One leaf on its way: the bytes, or why they could not be had."""

    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data = b""
        self.error: ChordError | None = None

    def finish(self, data: bytes) -> None:
        self.data = data
        self.done.set()

    def fail(self, error: ChordError) -> None:
        self.error = error
        self.done.set()


__all__ = ["BadRange", "BlockError", "BlockNotFound", "DhtClient", "PutFailed"]
