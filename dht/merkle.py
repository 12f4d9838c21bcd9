"""Files as Merkle DAGs of content-addressed blocks. Pure: no I/O.

A block's key is the SHA-256 of its bytes. A file is cut into chunks; the chunks
are the leaves, stored as raw bytes. Inner blocks are msgpack arrays

    ["chordcdn-dag", 1, height, size, chunk_size, [[child_hash, child_size], ...]]

where height 1 means the children are leaves. The root is the top inner block and
the file's CID is the hex of the root's hash. `DagBuilder` builds the blocks while
the file streams through it; `decode_node` and `check_leaf` verify what a peer
sent against what its parent claimed; `child_spans` says which children a byte
range needs, so a range read fetches only those leaves and the inner blocks above.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import ChordError, describe

MAGIC = "chordcdn-dag"
VERSION = 1
HASH_SIZE = 32
MAX_BLOCK = 1 << 20
DEFAULT_CHUNK = 256 * 1024
DEFAULT_FANOUT = 1024
_CID = re.compile(r"[0-9a-f]{64}")


class BlockError(ChordError):
    """A block is too large, does not match its key, or is not what its parent claims."""


class BadCid(ChordError, ValueError):
    """Text that is not a CID (64 lowercase hex digits)."""


def block_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def possession_proof(nonce: bytes, data: bytes) -> bytes:
    """What a holder answers to a challenge: SHA-256 of the nonce and the block's
    bytes. Only a node that has the bytes now can compute it for a fresh nonce."""
    digest = hashlib.sha256(nonce)
    digest.update(data)
    return digest.digest()


def verify_block(key: bytes, data: bytes) -> bytes:
    """Return data when it is a valid block stored under key, else raise BlockError."""
    if len(data) > MAX_BLOCK:
        raise BlockError(f"block of {len(data)} bytes exceeds the {MAX_BLOCK}-byte limit")
    if block_hash(data) != key:
        raise BlockError(f"content does not match key {key.hex()[:16]}…")
    return data


def parse_cid(text: str) -> bytes:
    """The root hash a CID names; raise BadCid for anything but 64 lowercase hex digits."""
    if not isinstance(text, str) or not _CID.fullmatch(text):
        raise BadCid(f"{describe(text, 80)} is not a CID (64 lowercase hex digits)")
    return bytes.fromhex(text)


@dataclass(frozen=True, slots=True)
class Child:
    hash: bytes
    size: int


@dataclass(frozen=True)
class DagNode:
    """A decoded inner block."""

    height: int
    size: int
    chunk_size: int
    children: list[Child] = field(default_factory=list)

    def encode(self) -> bytes:
        entries = [[child.hash, child.size] for child in self.children]
        return msgpack.packb([MAGIC, VERSION, self.height, self.size, self.chunk_size, entries], use_bin_type=True)


def decode_node(data: bytes, expect_size: int | None = None, expect_height: int | None = None) -> DagNode:
    """Decode and validate an inner block (already verified against its hash),
    checking it against what its parent claimed when that is given."""
    try:
        value = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BlockError(f"not a DAG node: {exc}") from None
    node = _node_from(value)
    if expect_size is not None and node.size != expect_size:
        raise BlockError(f"DAG node holds {node.size} bytes but its parent claims {expect_size}")
    if expect_height is not None and node.height != expect_height:
        raise BlockError(f"DAG node has height {node.height} but its parent implies {expect_height}")
    return node


def _node_from(value: Any) -> DagNode:
    if not (isinstance(value, list) and len(value) == 6 and value[0] == MAGIC and value[1] == VERSION):
        raise BlockError("not a chordcdn DAG node (bad magic, version or shape)")
    _, _, height, size, chunk_size, entries = value
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (height, size, chunk_size)):
        raise BlockError("DAG node height, size and chunk size must be integers")
    if height < 1 or size < 0 or not 0 < chunk_size <= MAX_BLOCK:
        raise BlockError(f"DAG node fields out of range: height {height}, size {size}, chunk {chunk_size}")
    if not isinstance(entries, list) or len(entries) > MAX_BLOCK // (HASH_SIZE + 2):
        raise BlockError("DAG node children must be a list of bounded length")
    children = [_child_from(entry, height, chunk_size) for entry in entries]
    if sum(child.size for child in children) != size:
        raise BlockError(f"DAG node claims {size} bytes but its children add up to {sum(c.size for c in children)}")
    return DagNode(height, size, chunk_size, children)


def _child_from(entry: Any, height: int, chunk_size: int) -> Child:
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bytes) and len(entry[0]) == HASH_SIZE):
        raise BlockError("a DAG child must be [32-byte hash, size]")
    size = entry[1]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BlockError("a DAG child's size must be a non-negative integer")
    if height == 1 and not 0 < size <= chunk_size:
        raise BlockError(f"a leaf of {size} bytes does not fit chunk size {chunk_size}")
    return Child(entry[0], size)


def check_leaf(data: bytes, claimed: int) -> bytes:
    """A leaf (already verified against its hash) must be as long as its parent claims."""
    if len(data) != claimed:
        raise BlockError(f"leaf holds {len(data)} bytes but its parent claims {claimed}")
    return data


@dataclass(frozen=True, slots=True)
class Span:
    """The part [start, end) of one child that a range read needs; the child
    starts `offset` bytes into its parent."""

    child: Child
    start: int
    end: int
    offset: int = 0


def child_spans(node: DagNode, start: int, end: int) -> list[Span]:
    """The children of node overlapping [start, end) of node's bytes, with the
    offsets to read inside each."""
    spans: list[Span] = []
    if start >= end:
        return spans
    offset = 0
    for child in node.children:
        child_end = offset + child.size
        if child_end > start and offset < end:
            spans.append(Span(child, max(start, offset) - offset, min(end, child_end) - offset, offset))
        if child_end >= end:
            break
        offset = child_end
    return spans


class DagBuilder:
    """Builds a file's blocks as its chunks stream in; holds O(fanout × height)."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK, fanout: int = DEFAULT_FANOUT) -> None:
        if not 0 < chunk_size <= MAX_BLOCK:
            raise ValueError(f"chunk size must be in 1..{MAX_BLOCK}, got {chunk_size}")
        if not 2 <= fanout <= MAX_BLOCK // (HASH_SIZE + 16):
            raise ValueError(f"fanout must be at least 2 and fit a block, got {fanout}")
        self.chunk_size = chunk_size
        self.fanout = fanout
        self._levels: list[list[Child]] = [[]]

    def add_chunk(self, chunk: bytes) -> list[bytes]:
        """Take the next chunk; return the blocks now complete (the leaf first)."""
        if not 0 < len(chunk) <= self.chunk_size:
            raise ValueError(f"a chunk must hold 1..{self.chunk_size} bytes, got {len(chunk)}")
        self._levels[0].append(Child(block_hash(chunk), len(chunk)))
        blocks = [chunk]
        level = 0
        while len(self._levels[level]) == self.fanout:
            blocks.append(self._close(level))
            level += 1
        return blocks

    def finish(self) -> tuple[list[bytes], bytes]:
        """Close every open level; return the remaining blocks and the root hash."""
        blocks: list[bytes] = []
        level = 0
        while True:
            on_top = not any(self._levels[level + 1 :])
            if on_top and level > 0 and len(self._levels[level]) == 1:
                return blocks, self._levels[level][0].hash
            if self._levels[level] or (on_top and level == 0):
                blocks.append(self._close(level))
            level += 1

    def _close(self, level: int) -> bytes:
        children, self._levels[level] = self._levels[level], []
        node = DagNode(level + 1, sum(c.size for c in children), self.chunk_size, children)
        block = node.encode()
        if len(self._levels) == level + 1:
            self._levels.append([])
        self._levels[level + 1].append(Child(block_hash(block), node.size))
        return block
