"""Unit tests for dht.merkle: the block format, DagBuilder, and DAG validation.

Pure and synchronous. Files are built into a dict of blocks and read back by a
small recursive reader that checks every node and leaf against what its parent
claims, exactly as a client reading from untrusted peers must.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import msgpack
import pytest

from dht.merkle import (
    HASH_SIZE,
    MAGIC,
    MAX_BLOCK,
    VERSION,
    BadCid,
    BlockError,
    Child,
    DagBuilder,
    DagNode,
    Span,
    block_hash,
    check_leaf,
    child_spans,
    decode_node,
    parse_cid,
    verify_block,
)

Blocks = dict[bytes, bytes]

# -- helpers -------------------------------------------------------------------------


def build(data: bytes, chunk_size: int, fanout: int) -> tuple[str, Blocks]:
    """Stream data through a DagBuilder; return the CID and every block by hash."""
    builder = DagBuilder(chunk_size, fanout)
    blocks: Blocks = {}
    for offset in range(0, len(data), chunk_size):
        for block in builder.add_chunk(data[offset : offset + chunk_size]):
            blocks[block_hash(block)] = block
    rest, root = builder.finish()
    for block in rest:
        blocks[block_hash(block)] = block
    assert root in blocks
    return root.hex(), blocks


def read_node(blocks: Blocks, node: DagNode, start: int, end: int) -> bytes:
    """Bytes [start, end) below node, validating every child against the node's claims."""
    out = bytearray()
    for span in child_spans(node, start, end):
        data = verify_block(span.child.hash, blocks[span.child.hash])
        if node.height == 1:
            out += check_leaf(data, span.child.size)[span.start : span.end]
        else:
            child = decode_node(data, expect_size=span.child.size, expect_height=node.height - 1)
            assert child.chunk_size == node.chunk_size
            out += read_node(blocks, child, span.start, span.end)
    return bytes(out)


def read(blocks: Blocks, cid: str, start: int = 0, end: int | None = None) -> bytes:
    root = decode_node(verify_block(parse_cid(cid), blocks[parse_cid(cid)]))
    return read_node(blocks, root, start, root.size if end is None else end)


def reachable(blocks: Blocks, cid: str) -> set[bytes]:
    """Hashes of every block the DAG under cid refers to, including the root."""
    seen: set[bytes] = set()
    todo = [(parse_cid(cid), None)]
    while todo:
        key, height = todo.pop()
        seen.add(key)
        if height == 0:
            continue
        node = decode_node(blocks[key], expect_height=height)
        todo.extend((child.hash, node.height - 1) for child in node.children)
    return seen


def root_of(blocks: Blocks, cid: str) -> DagNode:
    return decode_node(blocks[parse_cid(cid)])


def pack(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


H1, H2 = b"\x01" * HASH_SIZE, b"\x02" * HASH_SIZE

# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_size", "fanout", "height"),
    [
        (0, 4, 2, 1),
        (1, 4, 2, 1),
        (4, 4, 2, 1),  # exactly one chunk
        (5, 4, 2, 1),  # one chunk + 1: two leaves fit one height-1 node
        (8, 4, 2, 1),  # exactly fanout chunks
        (9, 4, 2, 2),
        (16, 4, 2, 2),
        (17, 4, 2, 3),
        (32, 4, 2, 3),
        (13, 4, 3, 2),
        (37, 4, 3, 3),
    ],
)
def test_every_range_round_trips(size: int, chunk_size: int, fanout: int, height: int) -> None:
    data = bytes(random.Random(size).randrange(256) for _ in range(size))
    cid, blocks = build(data, chunk_size, fanout)
    root = root_of(blocks, cid)
    assert (root.size, root.height, root.chunk_size) == (size, height, chunk_size)
    assert reachable(blocks, cid) == set(blocks)  # the builder emits no stray blocks
    assert all(len(block) <= MAX_BLOCK for block in blocks.values())
    for start in range(size + 1):
        for end in range(start, size + 1):
            assert read(blocks, cid, start, end) == data[start:end], (start, end)


def test_many_chunks_round_trip_and_random_ranges() -> None:
    rng = random.Random(7)
    data = rng.randbytes(16 * 1000 + 5)
    cid, blocks = build(data, 16, 4)
    root = root_of(blocks, cid)
    assert root.size == len(data) and root.height == 5  # 1001 leaves, fanout 4
    assert read(blocks, cid) == data
    for _ in range(200):
        start = rng.randrange(len(data) + 1)
        end = rng.randrange(start, len(data) + 1)
        assert read(blocks, cid, start, end) == data[start:end]


def test_cid_is_deterministic_and_depends_on_settings() -> None:
    data = random.Random(1).randbytes(1000)
    cid, _ = build(data, 16, 4)
    assert parse_cid(cid) and cid == cid.lower() and len(cid) == 64
    assert build(data, 16, 4)[0] == cid
    assert build(data, 32, 4)[0] != cid
    assert build(data, 16, 5)[0] != cid
    assert build(data[:-1] + bytes([data[-1] ^ 1]), 16, 4)[0] != cid


def test_empty_file_is_a_childless_height_one_root() -> None:
    cid, blocks = build(b"", 4, 2)
    assert len(blocks) == 1
    root = root_of(blocks, cid)
    assert root == DagNode(height=1, size=0, chunk_size=4, children=[])
    assert read(blocks, cid) == b""


def test_builder_state_stays_bounded() -> None:
    builder = DagBuilder(chunk_size=1, fanout=4)
    most = 0
    for index in range(10_000):
        builder.add_chunk(bytes([index % 256]))
        assert all(len(level) < 4 for level in builder._levels)
        most = max(most, sum(len(level) for level in builder._levels))
    assert len(builder._levels) <= 8  # ceil(log4(10_000)) + 1
    assert most <= 3 * 8
    blocks, root = builder.finish()
    assert decode_node(blocks[-1]).size == 10_000 and block_hash(blocks[-1]) == root


# -- decode_node validation ----------------------------------------------------------


def test_decode_node_accepts_a_valid_node() -> None:
    block = pack(MAGIC, VERSION, 1, 7, 4, [[H1, 4], [H2, 3]])
    assert decode_node(block, expect_size=7, expect_height=1) == DagNode(1, 7, 4, [Child(H1, 4), Child(H2, 3)])
    # above the leaves, a child may hold more than a chunk
    assert decode_node(pack(MAGIC, VERSION, 2, 100, 4, [[H1, 100]])).children == [Child(H1, 100)]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"", "not a DAG node"),
        (b"\xc1", "not a DAG node"),
        (b"\x96\xac", "not a DAG node"),  # truncated
        (pack(MAGIC, VERSION, 1, 0, 4, []) + b"\x00", "not a DAG node"),  # trailing bytes
        (msgpack.packb(5), "bad magic"),
        (msgpack.packb({"height": 1}), "bad magic"),
        (pack("chordcdn-dog", VERSION, 1, 0, 4, []), "bad magic"),
        (pack(MAGIC, 2, 1, 0, 4, []), "bad magic"),
        (pack(MAGIC, VERSION, 1, 0, 4), "bad magic"),
        (pack(MAGIC, VERSION, "1", 0, 4, []), "must be integers"),
        (pack(MAGIC, VERSION, 1, 0.0, 4, []), "must be integers"),
        (pack(MAGIC, VERSION, 1, 0, True, []), "must be integers"),
        (pack(MAGIC, VERSION, 1, None, 4, []), "must be integers"),
        (pack(MAGIC, VERSION, 1, -1, 4, []), "out of range"),
        (pack(MAGIC, VERSION, 0, 0, 4, []), "out of range"),
        (pack(MAGIC, VERSION, 1, 0, 0, []), "out of range"),
        (pack(MAGIC, VERSION, 1, 0, MAX_BLOCK + 1, []), "out of range"),
        (pack(MAGIC, VERSION, 1, 0, 4, {}), "must be a list"),
        (pack(MAGIC, VERSION, 1, 4, 4, [H1, 4]), r"\[32-byte hash, size\]"),
        (pack(MAGIC, VERSION, 1, 4, 4, [[H1[:31], 4]]), r"\[32-byte hash, size\]"),
        (pack(MAGIC, VERSION, 1, 4, 4, [[H1 + b"\x00", 4]]), r"\[32-byte hash, size\]"),
        (pack(MAGIC, VERSION, 1, 4, 4, [[H1.hex()[:32], 4]]), r"\[32-byte hash, size\]"),
        (pack(MAGIC, VERSION, 1, 4, 4, [[H1, 4, 0]]), r"\[32-byte hash, size\]"),
        (pack(MAGIC, VERSION, 1, 4, 4, [[H1, "4"]]), "non-negative integer"),
        (pack(MAGIC, VERSION, 1, 1, 4, [[H1, True]]), "non-negative integer"),
        (pack(MAGIC, VERSION, 2, 0, 4, [[H1, -1], [H2, 1]]), "non-negative integer"),
        (pack(MAGIC, VERSION, 1, 5, 4, [[H1, 5]]), "does not fit chunk size"),
        (pack(MAGIC, VERSION, 1, 4, 4, [[H1, 0], [H2, 4]]), "does not fit chunk size"),
        (pack(MAGIC, VERSION, 1, 9, 4, [[H1, 4], [H2, 4]]), "children add up to 8"),
        (pack(MAGIC, VERSION, 2, 1000, 4, [[H1, 4]]), "children add up to 4"),
        (pack(MAGIC, VERSION, 1, 3, 4, []), "children add up to 0"),
    ],
)
def test_decode_node_rejects_malformed_blocks(block: bytes, message: str) -> None:
    with pytest.raises(BlockError, match=message):
        decode_node(block)


def test_decode_node_checks_what_the_parent_claims() -> None:
    block = pack(MAGIC, VERSION, 2, 8, 4, [[H1, 8]])
    assert decode_node(block, expect_size=8, expect_height=2).size == 8
    with pytest.raises(BlockError, match="holds 8 bytes but its parent claims 9"):
        decode_node(block, expect_size=9)
    with pytest.raises(BlockError, match="height 2 but its parent implies 1"):
        decode_node(block, expect_height=1)


def test_check_leaf_requires_the_claimed_length() -> None:
    assert check_leaf(b"abcd", 4) == b"abcd"
    with pytest.raises(BlockError, match="leaf holds 3 bytes but its parent claims 4"):
        check_leaf(b"abc", 4)
    with pytest.raises(BlockError, match="leaf holds 5 bytes"):
        check_leaf(b"abcde", 4)


def test_reader_rejects_a_dag_whose_leaf_is_shorter_than_claimed() -> None:
    leaf = b"abc"
    node = DagNode(1, 4, 4, [Child(block_hash(leaf), 4)]).encode()  # claims 4 bytes
    blocks = {block_hash(leaf): leaf, block_hash(node): node}
    with pytest.raises(BlockError, match="leaf holds 3 bytes"):
        read(blocks, block_hash(node).hex())


# -- verify_block and parse_cid ------------------------------------------------------


def test_verify_block() -> None:
    data = b"hello"
    assert verify_block(hashlib.sha256(data).digest(), data) == data
    with pytest.raises(BlockError, match="does not match key"):
        verify_block(hashlib.sha256(data).digest(), b"hellO")
    exact = bytes(MAX_BLOCK)
    assert verify_block(block_hash(exact), exact) is exact
    big = bytes(MAX_BLOCK + 1)
    with pytest.raises(BlockError, match="exceeds"):
        verify_block(block_hash(big), big)


def test_parse_cid() -> None:
    key = block_hash(b"x")
    assert parse_cid(key.hex()) == key
    assert issubclass(BadCid, ValueError)
    for bad in [key.hex().upper(), key.hex()[:63], key.hex() + "0", "g" * 64, key.hex()[:63] + "\n", "", key, None, 5]:
        with pytest.raises(BadCid):
            parse_cid(bad)  # type: ignore[arg-type]


# -- child_spans ---------------------------------------------------------------------

NODE = DagNode(1, 10, 4, [Child(H1, 4), Child(H2, 4), Child(b"\x03" * HASH_SIZE, 2)])
A, B, C = NODE.children


def test_child_spans_offsets_are_relative_to_each_child() -> None:
    assert child_spans(NODE, 0, 10) == [Span(A, 0, 4, 0), Span(B, 0, 4, 4), Span(C, 0, 2, 8)]
    assert child_spans(NODE, 1, 3) == [Span(A, 1, 3, 0)]
    assert child_spans(NODE, 3, 9) == [Span(A, 3, 4, 0), Span(B, 0, 4, 4), Span(C, 0, 1, 8)]
    assert child_spans(NODE, 4, 8) == [Span(B, 0, 4, 4)]
    assert child_spans(NODE, 7, 10) == [Span(B, 3, 4, 4), Span(C, 0, 2, 8)]
    assert child_spans(NODE, 8, 10) == [Span(C, 0, 2, 8)]


@pytest.mark.parametrize("at", [0, 4, 8, 10])
def test_child_spans_empty_range_at_a_boundary_yields_nothing(at: int) -> None:
    assert child_spans(NODE, at, at) == []


@pytest.mark.parametrize("at", [1, 5, 9])
def test_child_spans_empty_range_inside_a_child_yields_nothing(at: int) -> None:
    assert child_spans(NODE, at, at) == []


# -- DagBuilder arguments ------------------------------------------------------------


@pytest.mark.parametrize(("chunk_size", "fanout"), [(0, 4), (MAX_BLOCK + 1, 4), (4, 1), (4, 0), (4, -3)])
def test_builder_rejects_bad_settings(chunk_size: int, fanout: int) -> None:
    with pytest.raises(ValueError):
        DagBuilder(chunk_size, fanout)


def test_builder_accepts_the_largest_chunk_size() -> None:
    assert DagBuilder(MAX_BLOCK, 2).chunk_size == MAX_BLOCK


def test_builder_rejects_empty_or_oversized_chunks() -> None:
    builder = DagBuilder(4, 2)
    with pytest.raises(ValueError, match="1..4 bytes, got 0"):
        builder.add_chunk(b"")
    with pytest.raises(ValueError, match="got 5"):
        builder.add_chunk(b"12345")
    assert builder.add_chunk(b"1234") == [b"1234"]  # the rejected chunks left no trace
    blocks, root = builder.finish()
    assert decode_node(blocks[-1]).children == [Child(block_hash(b"1234"), 4)]
