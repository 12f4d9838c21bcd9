"""Test helpers for the origin's availability check: a TLS ring in this process
whose nodes keep their blocks in segment files under a test's directory, and
damage done to those files from outside, the way bit rot or a bad disk would do
it, with nothing told to the node.

Owns the knowledge of where a block lies on disk: `records` reads the segment
format of `dht.segmentstore.DiskBlockStore` (a header, then the block)
through `dht.records` without the store's help, so a test can rot a copy under a
running node. Also the
life of server processes a test starts (`servers`, `stop_cleanly`).
"""

from __future__ import annotations

import os
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import trio

from dht import records as record_format  # the record format, read from outside
from dht.merkle import DEFAULT_CHUNK, MAX_BLOCK, DagBuilder, block_hash
from dht.segmentstore import LEGACY_SUFFIX, SUFFIX, DiskBlockStore
from dht.node import ChordNode
from dht.storage import BlockService, StorageConfig
from dht.tcp import open_tcp_transport

from .test_tcp_ring import QUICK, node_credentials

ServiceFactory = Callable[[ChordNode, DiskBlockStore, StorageConfig], BlockService]


@dataclass(frozen=True)
class Record:
    """One record of a block in a segment file: a put (its bytes start at
    `offset`) or a delete (a tombstone, no bytes)."""

    segment: Path
    offset: int
    length: int
    put: bool


def records(directory: Path, key: bytes) -> list[Record]:
    """Every record of `key` under `directory`, in the order the store wrote them."""
    found: list[Record] = []
    segments = [path for path in directory.iterdir() if path.suffix in (SUFFIX, LEGACY_SUFFIX)]
    for segment in sorted(segments, key=lambda path: int(path.stem)):
        version = 1 if segment.suffix == LEGACY_SUFFIX else 2
        for record in record_format.scan(segment.read_bytes(), MAX_BLOCK, version).records:
            if record.key == key:
                found.append(Record(segment, record.offset, record.length, record.kind == record_format.PUT))
    return found


def live_copy(directory: Path, key: bytes) -> Record | None:
    """The put record the store indexes for `key`, when its last record is a put."""
    found = records(directory, key)
    return found[-1] if found and found[-1].put else None


def intact_copies(directories: list[Path], key: bytes) -> int:
    """How many of the directories hold a live copy of `key` whose bytes verify."""
    count = 0
    for directory in directories:
        record = live_copy(directory, key)
        if record is not None:
            with open(record.segment, "rb") as segment:
                segment.seek(record.offset)
                count += block_hash(segment.read(record.length)) == key
    return count


def rot(directories: list[Path], key: bytes) -> int:
    """Flip bytes in the middle of every live copy of `key`; return how many
    copies were damaged. The nodes read the same files, so their next read of
    the block fails verification."""
    damaged = 0
    for directory in directories:
        record = live_copy(directory, key)
        if record is None:
            continue
        with open(record.segment, "r+b") as segment:
            middle = record.offset + record.length // 2
            segment.seek(middle)
            original = segment.read(8)
            segment.seek(middle)
            segment.write(bytes(byte ^ 0xFF for byte in original))
            segment.flush()
            os.fsync(segment.fileno())
        damaged += 1
    return damaged


def dag_blocks(data: bytes, chunk_size: int = DEFAULT_CHUNK) -> tuple[list[bytes], bytes]:
    """A file's blocks in publishing order (leaves, then inner blocks) and its root key."""
    builder = DagBuilder(chunk_size)
    blocks: list[bytes] = []
    for offset in range(0, len(data), chunk_size):
        blocks.extend(builder.add_chunk(data[offset : offset + chunk_size]))
    rest, root = builder.finish()
    return blocks + rest, root


@dataclass
class StoringNode:
    node: ChordNode
    service: BlockService
    directory: Path

    @property
    def store(self) -> DiskBlockStore:
        assert isinstance(self.service.store, DiskBlockStore)
        return self.service.store


class DiskRing:
    """Storing nodes on loopback with disk stores under `base`; no repair runs, so
    what a test sees healed, the origin healed."""

    def __init__(self, nursery: trio.Nursery, base: Path, replicas: int = 3) -> None:
        self.nursery, self.base, self.storage = nursery, base, StorageConfig(replicas=replicas)
        self.members: list[StoringNode] = []

    @property
    def address(self) -> str:
        return self.members[0].node.me.address

    async def start(self, count: int, service: ServiceFactory = BlockService) -> None:
        for _ in range(count):
            self.members.append(await self.nursery.start(self._serve, service))
        with trio.fail_after(20):
            while not self.consistent():
                await trio.sleep(0.05)

    async def _serve(self, service: ServiceFactory, task_status: trio.TaskStatus[StoringNode]) -> None:
        directory = self.base / f"node{len(self.members)}"
        async with open_tcp_transport("127.0.0.1", 0, tls=node_credentials()) as transport:
            node = ChordNode(transport, QUICK)
            store = DiskBlockStore(node.space, directory)
            member = StoringNode(node, service(node, store, self.storage), directory)
            await node.join(self.address if self.members else None)
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                task_status.started(member)
            await trio.sleep_forever()

    def consistent(self) -> bool:
        """Every successor and predecessor right, and successor lists long enough
        to name a whole replica set."""
        ids = sorted(member.node.me.id for member in self.members)
        enough = min(len(ids) - 1, self.storage.replicas)
        for member in self.members:
            routing, index = member.node.routing, ids.index(member.node.me.id)
            predecessor = routing.predecessor
            if routing.successor.id != ids[(index + 1) % len(ids)] or predecessor is None or predecessor.id != ids[index - 1]:
                return False
            if len({node.id for node in routing.successors} - {member.node.me.id}) < enough:
                return False
        return True

    def holding(self, key: bytes) -> list[StoringNode]:
        """The members that hold an intact copy of `key` now."""
        return [member for member in self.members if member.store.verified(key) is not None]

    def directories(self) -> list[Path]:
        return [member.directory for member in self.members]


@asynccontextmanager
async def servers() -> AsyncIterator[list[trio.Process]]:
    """A list for the server processes a test starts; any still running at the end is killed."""
    processes: list[trio.Process] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()


async def stop_cleanly(processes: list[trio.Process], timeout: float = 15.0) -> None:
    """SIGTERM every process; each must exit 0 within `timeout` seconds in all."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    with trio.fail_after(timeout):
        for process in processes:
            assert await process.wait() == 0, process.args
