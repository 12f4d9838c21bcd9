"""Whether the ring still holds every block of each published file, and putting back what it lost.

Owns the origin's availability check. A pass streams each published file from
the origin's own disk through the same `DagBuilder` that published it, a batch of
blocks at a time, and challenges every node of each block's replica set for a
proof of possession (`prove_blocks`: SHA-256 of a fresh nonce and the block's
bytes, which the origin computes from its own copy). A holder that has no copy, a
damaged one (the node drops it when the read fails verification) or answers a
wrong proof leaves the block short, and so does no holder proving it at all; a
short block is put again on its whole replica set, where a node's store replaces
a damaged copy with the fresh one. A holder that cannot be reached or refuses is
not believed either, but is left to the ring's own repair while another holder
proves the block (putting to a silent node would only wait on it). Nothing is
taken on a node's word: only a right answer to a fresh challenge counts, so a node
that lost a block cannot hide it (unless another node that still holds it answers
for it, in which case the block is still there).

The cost is bounded: file bytes are checked at most `rate` per second (`Pacer`),
memory is one batch of blocks, and the network carries a key and a 32-byte proof
per block and holder; only a block found short travels in full.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO

import trio

from dht import messages
from dht.client import DhtClient, PutFailed
from dht.errors import RemoteError, TransportError
from dht.merkle import DEFAULT_CHUNK, DEFAULT_FANOUT, DagBuilder, block_hash, possession_proof
from dht.routing import NodeRef

from .catalog import FileInfo, Signature

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL = 600.0  # seconds between the end of one pass and the start of the next
DEFAULT_CHECK_RATE = 16 * 1024 * 1024  # file bytes checked per second
BATCH_BLOCKS = 16  # blocks read, challenged and held at once (4 MiB of 256 KiB leaves)
NONCE_BYTES = 16


class FileMoved(Exception):
    """The file changed while it was being checked; the publisher handles the new version."""


@dataclass(frozen=True, slots=True)
class Challenged:
    """One block of a file, with the proof an honest holder gives for its batch's nonce."""

    key: bytes
    data: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Blocks challenged together, with the fresh nonce their proofs were computed for."""

    nonce: bytes
    blocks: list[Challenged]

    @property
    def size(self) -> int:
        return sum(len(block.data) for block in self.blocks)


@dataclass
class AvailabilityStats:
    """What the checks found and did, over every pass since the origin started."""

    passes: int = 0
    files: int = 0
    blocks: int = 0
    bytes_checked: int = 0
    short: int = 0  # blocks a holder lacked or failed to prove, or none proved
    republished: int = 0
    failed: int = 0  # blocks that could not be put again (the next pass retries)
    answers: Counter[str] = field(default_factory=Counter)  # proved, missing, wrong, unreachable, refused

    def summary(self) -> str:
        answers = " ".join(f"{kind}:{count}" for kind, count in sorted(self.answers.items()))
        return (
            f"{self.passes} passes, {self.files} files, {self.blocks} blocks, {self.bytes_checked} bytes checked; "
            f"{self.short} short, {self.republished} republished, {self.failed} failed; proofs {answers}"
        )


class Pacer:
    """Keeps work under `rate` units per second on average: each `spend` waits until
    the work before it has been paid for, then books its own."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"the check rate must be positive, not {rate}")
        self.rate = rate
        self._free_at = -float("inf")

    async def spend(self, amount: int) -> None:
        await trio.sleep_until(self._free_at)
        self._free_at = max(self._free_at, trio.current_time()) + amount / self.rate


class BlockReader:
    """A file's DAG blocks in publishing order, a batch at a time, each with its
    proof for a nonce. Blocking: call `next_batch` in a worker thread."""

    def __init__(self, source: BinaryIO, chunk_size: int = DEFAULT_CHUNK, fanout: int = DEFAULT_FANOUT) -> None:
        self._source = source
        self._builder = DagBuilder(chunk_size, fanout)
        self._chunk_size = chunk_size
        self._pending: list[bytes] = []
        self.root: bytes | None = None  # set once the whole file has been read

    def next_batch(self, nonce: bytes, limit: int) -> list[Challenged]:
        """Up to `limit` blocks (fewer only at the end; none once all were given)."""
        while len(self._pending) < limit and self.root is None:
            chunk = self._source.read(self._chunk_size)
            if chunk:
                self._pending.extend(self._builder.add_chunk(chunk))
            else:
                blocks, self.root = self._builder.finish()
                self._pending.extend(blocks)
        batch, self._pending = self._pending[:limit], self._pending[limit:]
        unique = {block_hash(data): data for data in batch}  # a file may repeat a chunk
        return [Challenged(key, data, possession_proof(nonce, data)) for key, data in unique.items()]


class AvailabilityCheck:
    """Checks files against the ring through `client`, and puts back lost blocks."""

    def __init__(self, client: DhtClient, pacer: Pacer, stats: AvailabilityStats, batch: int = BATCH_BLOCKS) -> None:
        if not 1 <= batch <= messages.MAX_PROVE:
            raise ValueError(f"a batch is 1..{messages.MAX_PROVE} blocks, not {batch}")
        self.client = client
        self.pacer = pacer
        self.stats = stats
        self.batch = batch

    async def check_file(self, url_path: str, info: FileInfo) -> int:
        """Check every block of one published file; return how many were put again.
        Raises FileMoved when the file is not the version `info` describes, and
        ChordError when the ring cannot be asked (a lookup fails)."""
        republished = 0
        with open(info.path, "rb") as source:
            if Signature.of(os.fstat(source.fileno())) != info.signature:
                raise FileMoved(f"{url_path}: changed since it was published")
            reader = BlockReader(source)
            while (batch := await self._next_batch(reader)).blocks:
                republished += await self._check_batch(url_path, batch)
            if Signature.of(os.fstat(source.fileno())) != info.signature or reader.root != bytes.fromhex(info.cid):
                raise FileMoved(f"{url_path}: changed while it was checked")
        self.stats.files += 1
        return republished

    async def _next_batch(self, reader: BlockReader) -> Batch:
        """The next blocks with a nonce no holder has seen, once the rate allows them."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        batch = Batch(nonce, await trio.to_thread.run_sync(reader.next_batch, nonce, self.batch))
        self.stats.blocks += len(batch.blocks)
        self.stats.bytes_checked += batch.size
        await self.pacer.spend(batch.size)
        return batch

    async def _check_batch(self, url_path: str, batch: Batch) -> int:
        """Challenge every holder of the batch's blocks; put again each block that a
        holder said it lacks or failed to prove, or that no holder proved."""
        holders, wanted = await self._holders(batch.blocks)
        tally = _Tally()
        async with trio.open_nursery() as nursery:  # the challenges catch their own failures
            for node, blocks in holders.values():
                nursery.start_soon(self._challenge, node, blocks, batch.nonce, tally)
        republished = 0
        for block in batch.blocks:
            if tally.lacking[block.key] or not tally.proved[block.key]:
                republished += await self._republish(url_path, block, tally.proved[block.key], wanted[block.key])
        return republished

    async def _holders(self, blocks: list[Challenged]) -> tuple[dict[int, tuple[NodeRef, list[Challenged]]], dict[bytes, int]]:
        """Each node of the blocks' replica sets with the blocks it should hold, and
        how many holders each block has."""
        holders: dict[int, tuple[NodeRef, list[Challenged]]] = {}
        wanted: dict[bytes, int] = {}
        for block in blocks:
            replica_set = await self.client.replica_set(self.client.space.position(block.key))
            wanted[block.key] = len(replica_set)
            for node in replica_set:
                holders.setdefault(node.id, (node, []))[1].append(block)
        return holders, wanted

    async def _challenge(self, node: NodeRef, blocks: list[Challenged], nonce: bytes, tally: "_Tally") -> None:
        keys = [block.key for block in blocks]
        try:
            answers = messages.proofs_reply(await self.client.call(node, "prove_blocks", nonce, keys), len(keys))
        except TransportError as exc:  # gone or silent: the ring's own repair sees to its copies
            log.info("availability: %s could not be challenged: %s", node.address, exc)
            self.stats.answers["unreachable"] += len(keys)
            return
        except RemoteError as exc:
            log.warning("availability: %s refused a challenge: %s", node.address, exc)
            self.stats.answers["refused"] += len(keys)
            return
        for block, answer in zip(blocks, answers):
            kind = "proved" if answer == block.proof else "missing" if answer is None else "wrong"
            self.stats.answers[kind] += 1
            if kind == "proved":
                tally.proved[block.key] += 1
            else:
                tally.lacking[block.key] += 1
                log.info("availability: %s: block %s %s", node.address, block.key.hex()[:16], _SAYS[kind])

    async def _republish(self, url_path: str, block: Challenged, proved: int, wanted: int) -> int:
        self.stats.short += 1
        try:
            await self.client.put_block(block.data)
        except PutFailed as exc:
            self.stats.failed += 1
            log.warning("availability: block %s of %s has %d of %d copies and could not be put again: %s",
                        block.key.hex(), url_path, proved, wanted, exc)
            return 0
        self.stats.republished += 1
        log.warning("availability: republished block %s of %s (%d of %d copies were proved)", block.key.hex(), url_path, proved, wanted)
        return 1


class _Tally:
    """What the holders of a batch answered: per key, proofs right, and copies
    missing or proofs wrong."""

    def __init__(self) -> None:
        self.proved: Counter[bytes] = Counter()
        self.lacking: Counter[bytes] = Counter()


_SAYS = {"missing": "has no intact copy there", "wrong": "was claimed with a wrong proof"}


__all__ = ["AvailabilityCheck", "AvailabilityStats", "BlockReader", "FileMoved", "Pacer"]
