"""Block storage on the simulated ring: round trips, ranges, replication, repair,
hand-off, corruption and bad input. Real node and storage code, virtual time."""

from __future__ import annotations

import io
import random

import pytest
import trio
from trio.testing import MockClock

from dht.client import BadRange, BlockNotFound, DhtClient, PutFailed
from dht.errors import RemoteError
from dht.merkle import BadCid, BlockError, DagNode, Child, block_hash, parse_cid
from dht.simcluster import SimCluster
from dht.storage import StorageConfig

from .conftest import ClusterFactory

R = 3
MANUAL = StorageConfig(replicas=R, repair_interval=10_000)  # tests run repair passes themselves
KIB = 1024


async def storing_ring(make_cluster: ClusterFactory, count: int = 12, storage: StorageConfig = MANUAL) -> SimCluster:
    cluster = make_cluster(storage=storage)
    await cluster.grow(count)
    await cluster.wait_until(lambda: cluster.is_converged() and cluster.successor_lists_full(), 60)
    return cluster


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def read_all(client: DhtClient, cid: str, start: int = 0, end: int | None = None) -> bytes:
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)

    await client.read(cid, sink, start, end)
    return bytes(out)


async def put(cluster: SimCluster, data: bytes, chunk: int = 256 * KIB, fanout: int = 1024) -> str:
    return await cluster.client().put_file(io.BytesIO(data), chunk, fanout)


def file_keys(cluster: SimCluster, cid: str) -> set[bytes]:
    """Every block key of a file, found by walking its DAG in the stores."""
    blocks = {key: data for service in cluster.services.values() for key, data in service.store.blocks.items()}
    keys, todo = set(), [parse_cid(cid)]
    while todo:
        key = todo.pop()
        keys.add(key)
        try:
            from dht.merkle import decode_node

            todo.extend(child.hash for child in decode_node(blocks[key]).children)
        except BlockError:
            pass  # a leaf
    return keys


@pytest.mark.parametrize("size", [0, 1, 256 * KIB, 256 * KIB + 1, 50 * 1024 * KIB])
async def test_round_trip(make_cluster: ClusterFactory, autojump_clock: MockClock, size: int) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(size)
    cid = await put(cluster, data)
    assert await read_all(cluster.client(), cid) == data
    assert (await cluster.client().stat(cid)).size == size
    assert all(cluster.copies(key) == R for key in file_keys(cluster, cid))


async def test_ranges_cross_chunk_and_inner_node_boundaries(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(20 * KIB + 7)
    cid = await put(cluster, data, chunk=KIB, fanout=4)  # 21 leaves, a tree of height 3
    client = cluster.client()
    assert (await client.stat(cid)).height == 3
    for start, end in [(0, 1), (1000, 1100), (1023, 1025), (4095, 4097), (4 * KIB - 1, 16 * KIB + 1), (0, len(data)), (len(data), len(data))]:
        assert await read_all(client, cid, start, end) == data[start:end]
    with pytest.raises(BadRange):
        await read_all(client, cid, 10, len(data) + 1)


async def test_range_reads_fetch_only_the_leaves_they_cover(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(64 * KIB)
    cid = await put(cluster, data, chunk=KIB, fanout=4)
    client = cluster.client()
    fetched: list[bytes] = []
    original = client.get_block

    async def counting(key: bytes) -> bytes:
        fetched.append(key)
        return await original(key)

    client.get_block = counting  # type: ignore[method-assign]
    assert await read_all(client, cid, 5 * KIB + 10, 6 * KIB + 10) == data[5 * KIB + 10 : 6 * KIB + 10]
    # root + one inner block per lower level (height 3 → 2 more) + the two leaves
    assert len(fetched) == 1 + 2 + 2


async def test_get_survives_killing_r_minus_1_holders(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(2 * 1024 * KIB)
    cid = await put(cluster, data, chunk=64 * KIB)
    root = parse_cid(cid)
    holders = [address for address, service in cluster.services.items() if root in service.store]
    assert len(holders) == R
    for address in holders[: R - 1]:
        cluster.crash(address)
    assert await read_all(cluster.client(), cid) == data


async def test_maintenance_restores_r_copies_after_failures(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster, 16, StorageConfig(replicas=R, repair_interval=5.0))
    cid = await put(cluster, payload(3 * 1024 * KIB), chunk=64 * KIB, fanout=8)
    keys = file_keys(cluster, cid)
    for address in cluster.rng.sample(sorted(cluster.nodes), R - 1):
        cluster.crash(address)
    assert min(cluster.copies(key) for key in keys) >= 1
    assert any(cluster.copies(key) < R for key in keys)
    # The periodic pass (every ~5 s) alone brings every block back to exactly R copies.
    elapsed = await cluster.wait_until(lambda: all(cluster.copies(key) == R for key in keys), 120)
    assert elapsed <= 120
    assert sum(service.stats.repair_pushed + service.stats.repair_pulled for service in cluster.services.values()) > 0


async def test_a_corrupt_copy_is_skipped_reported_and_repaired(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(100 * KIB)
    cid = await put(cluster, data, chunk=16 * KIB)
    root = parse_cid(cid)
    owner = cluster.ref(cluster.owner_id(cluster.nodes[next(iter(cluster.nodes))].space.position(root)))
    victim = cluster.services[owner.address]
    victim.store.blocks[root] = b"bit rot" + victim.store.blocks[root][7:]
    assert await read_all(cluster.client(), cid) == data
    assert victim.store.corrupt_found == 1 and root not in victim.store
    await cluster.repair_all()
    assert root in victim.store and cluster.copies(root) == R
    assert await victim.store.get(root) is not None


async def test_tampered_blocks_from_a_peer_are_never_accepted(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(64 * KIB)
    cid = await put(cluster, data, chunk=16 * KIB)
    root = parse_cid(cid)
    space = cluster.random_node().space
    owner = cluster.ref(cluster.owner_id(space.position(root)))

    def lie(service: object) -> None:
        async def tampered(key: bytes) -> bytes | None:
            return b"not what you asked for"

        service.store.get = tampered  # type: ignore[attr-defined]
        service.store.verified = lambda key: b"not what you asked for"  # type: ignore[attr-defined]

    lie(cluster.services[owner.address])  # the replica every reader asks first
    client = cluster.client()
    assert await read_all(client, cid) == data  # the lie was caught and an honest replica used
    assert client.stats.bad_copies >= 1
    for service in cluster.services.values():
        lie(service)
    with pytest.raises(BlockNotFound):
        await read_all(cluster.client(), cid)


async def test_join_and_graceful_leave_move_keys_without_dropping_below_r(
    make_cluster: ClusterFactory, autojump_clock: MockClock
) -> None:
    cluster = await storing_ring(make_cluster)
    cid = await put(cluster, payload(4 * 1024 * KIB), chunk=64 * KIB, fanout=8)
    keys = file_keys(cluster, cid)
    newcomer = await cluster.add_node()
    await cluster.wait_until(cluster.is_converged, 60)
    await cluster.repair_all()
    owned = [k for k in keys if cluster.owner_id(newcomer.space.position(k)) == newcomer.me.id]
    assert owned and all(key in cluster.services[newcomer.me.address].store for key in owned)
    await cluster.repair_all()
    assert all(cluster.copies(key) == R for key in keys)
    for address in cluster.rng.sample(sorted(cluster.nodes), 4):
        await cluster.leave(address)
        assert min(cluster.copies(key) for key in keys) >= R  # handed off before leaving
    await cluster.repair_all()
    assert all(cluster.copies(key) == R for key in keys)


async def test_bad_input_gets_clear_errors_and_loses_nothing(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = payload(300 * KIB)
    cid = await put(cluster, data, chunk=64 * KIB)
    node = cluster.random_node()
    target = cluster.random_node().me
    with pytest.raises(RemoteError, match="at most"):
        big = bytes(1024 * KIB + 1)
        await node.call(target, "put_block", block_hash(big), big)
    with pytest.raises(RemoteError, match="does not match"):
        await node.call(target, "put_block", block_hash(b"one"), b"two")
    with pytest.raises(RemoteError, match="32 bytes"):
        await node.call(target, "get_block", b"short")
    client = cluster.client()
    with pytest.raises(BadCid):
        await read_all(client, "not-a-cid")
    with pytest.raises(BlockNotFound):
        started = trio.current_time()
        await read_all(client, "ab" * 32)
    assert trio.current_time() - started < 30
    # A DAG whose root claims more bytes than its leaf has.
    leaf = b"ten bytes!"
    liar = DagNode(1, 20, 64, [Child(block_hash(leaf), 20)])
    await client.put_block(leaf)
    lying_cid = (await client.put_block(liar.encode())).hex()
    with pytest.raises(BlockError, match="parent claims 20"):
        await read_all(client, lying_cid)
    assert await read_all(client, cid) == data  # nothing stored was lost


async def test_repair_traffic_follows_the_differences(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster, 12)
    cid = await put(cluster, payload(8 * 1024 * KIB), chunk=64 * KIB, fanout=16)
    keys = file_keys(cluster, cid)
    await cluster.repair_all()
    stats = cluster.network.stats

    def moved() -> int:
        return sum(s.stats.repair_pushed + s.stats.repair_pulled for s in cluster.services.values())

    before_moved, before_lists = moved(), stats.by_method.get("list_keys", 0)
    await cluster.repair_all()  # everything in sync: digests agree, nothing is listed or sent
    assert moved() == before_moved
    assert stats.by_method.get("list_keys", 0) == before_lists
    victim_key = next(iter(keys))
    holder = next(s for s in cluster.services.values() if victim_key in s.store)
    await holder.store.delete(victim_key)
    await cluster.repair_all()
    assert moved() == before_moved + 1  # exactly the one missing block
    assert stats.by_method.get("list_keys", 0) - before_lists <= 2 * 2  # one leaf arc per request/reply
    assert all(cluster.copies(key) == R for key in keys)


async def test_write_quorum_decides_when_a_put_succeeds(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    block = b"a block few nodes will take"
    space = cluster.random_node().space
    owner = cluster.ref(cluster.owner_id(space.position(block_hash(block))))

    async def refuse(key: bytes, data: bytes) -> bool:
        raise BlockError("disk full")

    for address, service in cluster.services.items():
        if address != owner.address:
            service.store.put = refuse  # type: ignore[method-assign]
    with pytest.raises(PutFailed, match="only 1 of 3 copies"):
        await cluster.client().put_block(block)
    client = DhtClient.for_node(cluster.random_node(), write_quorum=1)
    assert await client.put_block(block) == block_hash(block)
    assert cluster.copies(block_hash(block)) == 1
