"""Unit tests for dht.blockstore: both back ends behind one ring-ordered index.

Every test that does not concern one back end runs against MemoryBlockStore and
DiskBlockStore (segment files in a pytest tmp_path). Arc queries are compared with a
brute-force filter over IdSpace.position.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Callable, Iterator

import pytest

from dht.blockstore import BlockStore, MemoryBlockStore
from dht import records
from dht.segmentstore import DiskBlockStore
from dht.ids import IdSpace, in_half_open
from dht.merkle import MAX_BLOCK, BlockError, block_hash

StoreFactory = Callable[[int], BlockStore]


@pytest.fixture(params=["memory", "disk"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Build a store of the parametrized kind over IdSpace(bits); disk stores are closed afterwards."""
    opened: list[DiskBlockStore] = []

    def build(bits: int = 256) -> BlockStore:
        if request.param == "memory":
            return MemoryBlockStore(IdSpace(bits))
        store = DiskBlockStore(IdSpace(bits), tmp_path / f"blocks{len(opened)}")
        opened.append(store)
        return store

    yield build
    for store in opened:
        store.close()


def blocks(count: int, seed: int = 0) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    found: dict[bytes, bytes] = {}
    while len(found) < count:
        data = rng.randbytes(rng.randrange(1, 64))
        found[block_hash(data)] = data
    return found


async def fill(store: BlockStore, count: int, seed: int = 0) -> dict[bytes, bytes]:
    items = blocks(count, seed)
    for key, data in items.items():
        assert await store.put(key, data)
    return items


def tamper(store: BlockStore, key: bytes, value: bytes | None) -> None:
    """Change (or, with None, remove) a stored copy behind the store's back."""
    if isinstance(store, MemoryBlockStore):
        if value is None:
            del store.blocks[key]
        else:
            store.blocks[key] = value
    elif isinstance(store, DiskBlockStore):
        segment, offset, length = store._locations[key]
        with open(store._path(segment), "r+b") as segment_file:
            segment_file.seek(offset)  # None: the bytes are gone, zeros in their place
            segment_file.write(value.ljust(length, b"\0")[:length] if value else bytes(length))


def brute_keys_in(space: IdSpace, keys: list[bytes], lo: int, hi: int) -> list[bytes]:
    """Keys whose positions lie in (lo, hi], in ring order starting just after lo."""
    inside = [key for key in keys if in_half_open(space.position(key), lo, hi)]
    return sorted(inside, key=lambda key: ((space.position(key) - lo - 1) % space.size, key))


def xor_of(keys: list[bytes]) -> int:
    value = 0
    for key in keys:
        value ^= int.from_bytes(key, "big")
    return value


# -- blocks ------------------------------------------------------------------------


async def test_put_get_contains_len_delete(make_store: StoreFactory) -> None:
    store = make_store(256)
    data = b"some block"
    key = block_hash(data)
    assert len(store) == 0 and key not in store and await store.get(key) is None
    assert await store.put(key, data) is True
    assert await store.put(key, data) is False
    assert key in store and len(store) == 1 and store.keys() == [key]
    assert await store.get(key) == data
    await store.delete(key)
    assert key not in store and len(store) == 0 and await store.get(key) is None
    await store.delete(key)  # deleting a missing key is harmless
    assert await store.put(key, data) is True  # and it can come back
    assert store.corrupt_found == 0


async def test_large_block_round_trips(make_store: StoreFactory) -> None:
    store = make_store(256)
    data = random.Random(3).randbytes(MAX_BLOCK)
    assert await store.put(block_hash(data), data)
    assert await store.get(block_hash(data)) == data


async def test_put_rejects_a_key_that_does_not_match(make_store: StoreFactory) -> None:
    store = make_store(256)
    with pytest.raises(BlockError, match="does not match"):
        await store.put(block_hash(b"good"), b"evil")
    assert len(store) == 0 and block_hash(b"good") not in store
    assert await store.get(block_hash(b"good")) is None and store.corrupt_found == 0


async def test_put_rejects_an_oversized_block(make_store: StoreFactory) -> None:
    store = make_store(256)
    data = bytes(MAX_BLOCK + 1)
    with pytest.raises(BlockError, match="exceeds"):
        await store.put(block_hash(data), data)
    assert len(store) == 0


@pytest.mark.parametrize("value", [b"evil", b"", None], ids=["changed", "emptied", "vanished"])
async def test_corrupt_copy_is_dropped_and_counted(make_store: StoreFactory, value: bytes | None) -> None:
    store = make_store(8)
    items = await fill(store, 5)
    victim, *others = list(items)
    tamper(store, victim, value)
    assert await store.get(victim) is None
    assert store.corrupt_found == 1
    assert victim not in store and len(store) == 4 and victim not in store.keys_in(0, 0)
    assert await store.get(victim) is None and store.corrupt_found == 1  # counted once
    for key in others:
        assert await store.get(key) == items[key]
    assert store.corrupt_found == 1
    assert await store.put(victim, items[victim]) is True  # a good copy can be stored again
    assert await store.get(victim) == items[victim]


# -- arcs ----------------------------------------------------------------------------


async def test_keys_in_matches_brute_force_on_a_small_ring(make_store: StoreFactory) -> None:
    store = make_store(8)
    space = store.space
    keys = list(await fill(store, 200))
    rng = random.Random(4)
    points = sorted({0, 1, 2, 127, 128, 254, 255, *(space.position(k) for k in keys[:10])} | {rng.randrange(256) for _ in range(15)})
    for lo in points:
        for hi in points:
            assert store.keys_in(lo, hi) == brute_keys_in(space, keys, lo, hi), (lo, hi)
    assert store.keys_in(255, 255) == sorted(keys)  # the whole circle from position 0
    wrapped = store.keys_in(200, 200)
    assert sorted(wrapped) == sorted(keys) and space.position(wrapped[0]) > 200


async def test_keys_in_matches_brute_force_on_the_full_ring(make_store: StoreFactory) -> None:
    store = make_store(256)
    space = store.space
    keys = list(await fill(store, 60, seed=1))
    rng = random.Random(5)
    top = space.size - 1
    points = [0, 1, top - 1, top, *(space.position(k) for k in keys[:5])] + [rng.randrange(space.size) for _ in range(10)]
    for lo in points:
        for hi in points:
            assert store.keys_in(lo, hi) == brute_keys_in(space, keys, lo, hi), (lo, hi)


async def test_digest_is_count_and_xor_of_the_arc(make_store: StoreFactory) -> None:
    store = make_store(8)
    await fill(store, 200)
    for lo, hi in [(0, 0), (10, 20), (250, 5), (255, 0), (0, 255), (100, 99), (37, 37)]:
        keys = store.keys_in(lo, hi)
        assert store.digest(lo, hi) == (len(keys), xor_of(keys))
    assert store.digest(0, 0)[0] == 200
    assert make_store(8).digest(0, 0) == (0, 0)


@pytest.mark.parametrize("bits", [8, 256])
async def test_digests_of_split_arcs_add_up_to_the_whole(make_store: StoreFactory, bits: int) -> None:
    store = make_store(bits)
    await fill(store, 200)
    size = store.space.size
    for lo, hi in [(0, 0), (size // 3, size // 3), (size // 4, size // 2), (size - size // 5, size // 7)]:
        count, value = store.digest(lo, hi)
        for parts in (1, 2, 3, 16):
            arcs = store.space.split_arc(lo, hi, parts)
            digests = store.digests(arcs)
            assert digests == [store.digest(a, b) for a, b in arcs]
            assert sum(c for c, _ in digests) == count
            total = 0
            for _, part in digests:
                total ^= part
            assert total == value
            assert [k for a, b in arcs for k in store.keys_in(a, b)] == store.keys_in(lo, hi)


async def test_digests_of_a_short_arc_split_into_more_parts_than_positions(make_store: StoreFactory) -> None:
    store = make_store(8)
    await fill(store, 200)
    arcs = store.space.split_arc(10, 13, 4)
    assert sum(c for c, _ in store.digests(arcs)) == store.digest(10, 13)[0]


# -- disk persistence ---------------------------------------------------------------


async def test_disk_store_survives_reopening(tmp_path: Path) -> None:
    space = IdSpace(16)
    store = DiskBlockStore(space, tmp_path / "blocks")
    items = blocks(30, seed=2)
    big = random.Random(6).randbytes(100_000)
    items[block_hash(big)] = big
    for key, data in items.items():
        await store.put(key, data)
    store.close()

    again = DiskBlockStore(space, tmp_path / "blocks")
    try:
        assert len(again) == len(items) and set(again.keys()) == set(items)
        assert again.keys_in(space.size - 1, space.size - 1) == sorted(items)
        for key, data in items.items():
            assert await again.get(key) == data
        assert again.corrupt_found == 0
        assert await again.put(block_hash(big), big) is False
    finally:
        again.close()


async def test_disk_store_ignores_a_torn_tail_and_foreign_bytes(tmp_path: Path) -> None:
    """A crash in mid-write leaves a torn record at a segment's end; bytes that are
    not records at all stop the scan of that segment. Neither is ever indexed, what
    came before is kept, and writes go on in a new segment."""
    space = IdSpace(256)
    store = DiskBlockStore(space, tmp_path / "blocks")
    good = b"a real block"
    await store.put(block_hash(good), good)
    store.close()
    (segment,) = sorted((tmp_path / "blocks").glob("*.seg"))
    torn_key = block_hash(b"x" * 300)
    with open(segment, "ab") as tail:
        tail.write(records.encode_header(records.PUT, torn_key, b"x" * 300) + b"only part of it")
    again = DiskBlockStore(space, tmp_path / "blocks")
    assert again.keys() == [block_hash(good)] and torn_key not in again
    assert again.loaded.torn_tails == 1 and again.loaded.damaged == 0
    later = b"written after the restart"
    await again.put(block_hash(later), later)
    again.close()
    assert len(list((tmp_path / "blocks").glob("*.seg"))) == 2
    with open(segment, "ab") as tail:
        tail.write(b"this is not a record at all" * 3)
    third = DiskBlockStore(space, tmp_path / "blocks")
    try:
        assert sorted(third.keys()) == sorted([block_hash(good), block_hash(later)])
        assert await third.get(block_hash(good)) == good and await third.get(block_hash(later)) == later
    finally:
        third.close()


async def test_segments_written_before_checksums_are_still_read(tmp_path: Path) -> None:
    """A `*.blocks` segment in the first record format (no checksums) loads beside
    the new ones, and new writes go to a new `*.seg` segment after it."""
    space = IdSpace(256)
    old, gone, later = b"written by an older version", b"deleted then", b"written now"
    legacy = bytearray()
    for kind, block in ((records.PUT, old), (records.PUT, gone), (records.DELETE, gone)):
        body = block if kind == records.PUT else b""
        legacy += struct.pack(">4sB32sI", records.LEGACY_MAGIC, kind, block_hash(block), len(body)) + body
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "000003.blocks").write_bytes(bytes(legacy))
    store = DiskBlockStore(space, tmp_path / "blocks")
    assert store.keys() == [block_hash(old)] and store.verified(block_hash(old)) == old
    await store.put(block_hash(later), later)
    store.close()
    assert sorted(path.name for path in (tmp_path / "blocks").iterdir()) == ["000003.blocks", "000004.seg"]
    again = DiskBlockStore(space, tmp_path / "blocks")
    assert sorted(again.keys()) == sorted([block_hash(old), block_hash(later)])
    again.close()


async def test_disk_store_deletes_survive_a_restart(tmp_path: Path) -> None:
    space = IdSpace(256)
    store = DiskBlockStore(space, tmp_path / "blocks")
    kept, gone = b"kept", b"gone"
    for block in (kept, gone):
        await store.put(block_hash(block), block)
    await store.delete(block_hash(gone))
    store.close()
    again = DiskBlockStore(space, tmp_path / "blocks")
    try:
        assert again.keys() == [block_hash(kept)]
        assert await again.get(block_hash(gone)) is None and again.corrupt_found == 0
    finally:
        again.close()


async def test_putting_a_good_copy_over_a_corrupt_one_replaces_it(make_store: StoreFactory) -> None:
    store = make_store(16)
    items = await fill(store, 3)
    key, data = next(iter(items.items()))
    tamper(store, key, b"rotten")
    assert await store.put(key, data) is True  # not mistaken for "already here"
    assert await store.get(key) == data
    assert store.corrupt_found == 1
