"""Putting files into the ring and reading them back, verified.

Owns the reader's and writer's side of block storage. A put streams the file
through a DagBuilder and stores each block with its owner (which makes the
replicas), a bounded number at once. A read fetches the root, then only the inner
blocks and leaves that the byte range covers, a bounded number ahead, and hands
the bytes to a sink in order. Each block comes from the first replica that
returns it intact: a timeout, a miss or a bad hash moves on to the next one, so
no unverified byte reaches the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, BinaryIO, Callable

import trio

from .errors import ChordError, RemoteError, TransportError
from .ids import IdSpace
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
    parse_cid,
)
from .node import ChordNode
from .routing import NodeRef, refs_from_wire
from .transport import Transport

log = logging.getLogger(__name__)

Locate = Callable[[int], Awaitable[list[NodeRef]]]
Call = Callable[..., Awaitable[Any]]
Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int], None]


class BlockNotFound(ChordError):
    """No replica returned an intact copy of a block."""


class PutFailed(ChordError):
    """A block could not be stored with enough copies."""


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
        write_quorum: int | None = None,
        window: int = 16,
        read_attempts: int = 4,
    ) -> None:
        self.call = call
        self.locate = locate
        self.space = space
        self.write_quorum = write_quorum
        self.window = window
        self.read_attempts = read_attempts
        self.stats = ClientStats()

    @classmethod
    def for_node(cls, node: ChordNode, **options: Any) -> "DhtClient":
        """A client inside a node: it locates keys with the node's own lookups."""

        async def locate(position: int) -> list[NodeRef]:
            return (await node.lookup(position)).successors

        return cls(node.call, locate, node.space, **options)

    @classmethod
    async def via(cls, transport: Transport, address: str, timeout: float = 10.0, **options: Any) -> "DhtClient":
        """A client outside the ring that asks the node at `address` to do lookups."""
        info = await transport.call(address, "info", [], timeout=timeout)

        async def call(node: NodeRef, method: str, *args: Any) -> Any:
            return await transport.call(node.address, method, list(args), timeout=timeout)

        async def locate(position: int) -> list[NodeRef]:
            reply = await transport.call(address, "lookup", [position], timeout=timeout)
            return refs_from_wire(reply["successors"])

        return cls(call, locate, IdSpace(info["bits"]), **options)

    # -- blocks -------------------------------------------------------------------------------

    async def put_block(self, data: bytes) -> bytes:
        """Store one block with its owner, which replicates it; return its key."""
        key = block_hash(data)
        nodes = await self.locate(self.space.position(key))
        failures: list[str] = []
        for node in nodes[: self.read_attempts]:
            try:
                acks, target = await self.call(node, "put_block", key, data, True)
            except (TransportError, RemoteError) as exc:
                failures.append(f"{node.address}: {exc}")
                self.stats.failovers += 1
                continue
            needed = target if self.write_quorum is None else min(self.write_quorum, target)
            if acks >= needed:
                return key
            failures.append(f"{node.address}: only {acks} of {needed} copies acknowledged")
        raise PutFailed(f"block {key.hex()[:16]}…: " + ("; ".join(failures) or "no node to store it on"))

    async def get_block(self, key: bytes) -> bytes:
        """The block under key from the first replica that has an intact copy."""
        nodes = await self.locate(self.space.position(key))
        for node in nodes[: self.read_attempts]:
            try:
                data = await self.call(node, "get_block", key)
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
        raise BlockNotFound(f"block {key.hex()} was not found on {min(len(nodes), self.read_attempts)} replicas")

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

    async def read(self, cid: str, sink: Sink, start: int = 0, end: int | None = None) -> int:
        """Send bytes [start, end) of the file (all of it by default) to sink, in
        order; return how many were sent."""
        root = await self.stat(cid)
        end = root.size if end is None else end
        if not 0 <= start <= end <= root.size:
            raise BadRange(f"range {start}-{end} does not fit a file of {root.size} bytes")
        send, receive = trio.open_memory_channel[_Pending](self.window)
        failures: list[ChordError] = []
        sent = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetch_leaves, root, start, end, send, nursery)
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
        self, root: DagNode, start: int, end: int, send: trio.MemorySendChannel["_Pending"], nursery: trio.Nursery
    ) -> None:
        """Walk the DAG over [start, end), starting a fetch for each leaf it needs
        and queueing it in order; the channel's capacity bounds how far ahead."""
        async with send:
            try:
                await self._walk(root, start, end, send, nursery)
            except ChordError as exc:
                failed = _Pending()
                failed.fail(exc)
                await send.send(failed)

    async def _walk(self, node: DagNode, start: int, end: int, send: trio.MemorySendChannel["_Pending"], nursery: trio.Nursery) -> None:
        for span in child_spans(node, start, end):
            if node.height > 1:
                child = decode_node(await self.get_block(span.child.hash), span.child.size, node.height - 1)
                await self._walk(child, span.start, span.end, send, nursery)
                continue
            pending = _Pending()
            nursery.start_soon(self._fetch_leaf, span.child.hash, span.child.size, span.start, span.end, pending)
            await send.send(pending)

    async def _fetch_leaf(self, key: bytes, size: int, start: int, end: int, pending: "_Pending") -> None:
        try:
            data = check_leaf(await self.get_block(key), size)
        except ChordError as exc:
            pending.fail(exc)
            return
        pending.finish(data[start:end] if (start, end) != (0, size) else data)


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
