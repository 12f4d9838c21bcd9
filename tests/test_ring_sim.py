"""The Chord protocol on the simulated network, in virtual time.

Real node code, real stabilization; the oracle in SimCluster says what the ring
should be. Every wait is a condition with a stated virtual-time deadline.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

from dht.errors import LookupFailed
from dht.ids import in_half_open
from dht.node import NodeConfig
from dht.simcluster import SimCluster

from .conftest import FAST, ClusterFactory

# Budgets in virtual seconds, with stabilize every ~1 s and fix_fingers every ~0.5 s.
CONVERGE_BUDGET = 60.0
FINGERS_BUDGET = 120.0
HEAL_BUDGET = 60.0


async def stable_ring(make_cluster: ClusterFactory, count: int, **options: object) -> SimCluster:
    cluster = make_cluster(**options)
    await cluster.grow(count)
    await cluster.wait_until(cluster.is_converged, CONVERGE_BUDGET)
    await cluster.wait_until(cluster.fingers_converged, FINGERS_BUDGET, poll=2.0)
    return cluster


async def test_64_sequential_joins_converge_within_budget(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(check_wire=True)  # every message also goes through the TCP codec
    await cluster.grow(64)
    elapsed = await cluster.wait_until(cluster.is_converged, CONVERGE_BUDGET)
    assert elapsed <= CONVERGE_BUDGET
    assert len(cluster.nodes) == 64 and cluster.ring_errors() == []
    await cluster.wait_until(cluster.fingers_converged, FINGERS_BUDGET, poll=2.0)
    assert cluster.network.stats.bytes > 0


async def test_10000_random_lookups_find_the_true_owner(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 64)
    tally = await cluster.run_lookups(10_000)
    assert tally.correct == 10_000
    assert sum(tally.hops) / len(tally.hops) <= 3.0  # ½·log2(64)


async def test_twenty_percent_crash_heals_and_lookups_recover(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 64)
    victims = cluster.rng.sample(sorted(cluster.nodes), 13)
    for address in victims:
        cluster.crash(address)
    assert not cluster.is_converged()
    await cluster.wait_until(cluster.is_converged, HEAL_BUDGET)
    tally = await cluster.run_lookups(2_000)
    assert tally.wrong == tally.failed == 0


async def test_lookups_route_around_fresh_failures_within_deadline(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 64)
    crashed = set(cluster.rng.sample(sorted(cluster.nodes), 13))
    crashed_ids = {cluster.nodes[address].me.id for address in crashed}
    keys = [cluster.rng.getrandbits(256) for _ in range(300)]
    for address in crashed:
        cluster.crash(address)
    results = []
    started = trio.current_time()
    async with trio.open_nursery() as batch:
        for key in keys:
            async def one(key: int = key) -> None:
                results.append((key, await cluster.random_node().lookup(key)))
            batch.start_soon(one)
    assert trio.current_time() - started <= FAST.lookup_timeout
    assert len(results) == len(keys)  # none raised LookupFailed
    assert sum(result.timeouts for _, result in results) > 0  # dead hops were met and skipped
    for key, result in results:
        live_owner = cluster.owner_id(key)
        # Before anyone notices a crash, the answer may still be a dead node that
        # preceded the live owner; it is never a live node other than the owner.
        assert result.owner.id == live_owner or (
            result.owner.id in crashed_ids and in_half_open(result.owner.id, key, live_owner)
        )


async def test_graceful_leaves_repair_the_ring_at_once(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 32)
    for address in cluster.rng.sample(sorted(cluster.nodes), 10):
        await cluster.leave(address)
        assert cluster.ring_errors() == []  # no stabilize round needed
    tally = await cluster.run_lookups(1_000)
    assert tally.wrong == tally.failed == 0


async def test_leaving_down_to_one_node(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 4)
    for address in sorted(cluster.nodes)[:3]:
        await cluster.leave(address)
    (last,) = cluster.nodes.values()
    assert last.routing.successors == [] and last.routing.predecessor is None
    assert (await last.lookup(12345)).owner == last.me


async def test_joins_concurrent_with_lookups(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 32)
    failures: list[str] = []
    done = trio.Event()

    async def keep_looking_up() -> None:
        while not done.is_set():
            key = cluster.rng.getrandbits(256)
            before = set(cluster.ids)
            owner_before = cluster.owner_id(key)
            try:
                result = await cluster.random_node().lookup(key)
            except LookupFailed as exc:
                failures.append(str(exc))
                continue
            # A node that joined meanwhile may take the key over; nothing else may change.
            if result.owner.id not in (owner_before, cluster.owner_id(key)) and result.owner.id in before:
                failures.append(f"key {key:x}: got {result.owner.id:x}")

    async with trio.open_nursery() as workers:
        for _ in range(8):
            workers.start_soon(keep_looking_up)
        await cluster.grow(32)
        done.set()
    assert failures == []
    await cluster.wait_until(cluster.is_converged, CONVERGE_BUDGET)
    tally = await cluster.run_lookups(1_000)
    assert tally.correct == 1_000 and len(cluster.nodes) == 64


async def test_crashed_node_restarts_empty_and_rejoins(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 16)
    address = sorted(cluster.nodes)[0]
    old = cluster.crash(address)
    await cluster.wait_until(cluster.is_converged, HEAL_BUDGET)
    fresh = await cluster.add_node(address=address)
    assert fresh.me.id == old.me.id and fresh is not old
    await cluster.wait_until(cluster.is_converged, CONVERGE_BUDGET)
    tally = await cluster.run_lookups(500)
    assert tally.wrong == tally.failed == 0


async def test_ring_converges_and_routes_under_message_loss(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(loss=0.02)
    await cluster.grow(32)
    await cluster.wait_until(cluster.is_converged, 2 * CONVERGE_BUDGET)
    tally = await cluster.run_lookups(1_000)
    assert tally.correct >= 990  # a lost final reply can leave a stale answer; nearly all are right


async def test_small_identifier_space(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(config=NodeConfig(bits=16, stabilize_interval=1.0, fix_fingers_interval=0.5, rpc_timeout=0.5))
    await cluster.grow(24)
    await cluster.wait_until(cluster.is_converged, CONVERGE_BUDGET)
    assert all(node.me.id < 2**16 for node in cluster.nodes.values())
    for key in (0, 1, 2**16 - 1, *cluster.ids):
        assert (await cluster.random_node().lookup(key)).owner.id == cluster.owner_id(key)


async def test_a_ring_of_one_grows_again(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await stable_ring(make_cluster, 3)
    for address in sorted(cluster.nodes)[:2]:
        await cluster.leave(address)
    (last,) = cluster.nodes.values()
    await cluster.grow(5)  # at once: joiners retry while the survivor drops stale pointers
    await cluster.wait_until(cluster.is_converged, CONVERGE_BUDGET)
    tally = await cluster.run_lookups(300)
    assert tally.correct == 300


async def test_half_the_ring_crashing_heals_into_one_ring(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    # Some nodes lose all 8 successors at once; they must find their place again
    # rather than close a loop of their own beside the ring.
    cluster = await stable_ring(make_cluster, 200)
    for address in cluster.rng.sample(sorted(cluster.nodes), 100):
        cluster.crash(address)
    await cluster.wait_until(cluster.is_converged, 600)
    tally = await cluster.run_lookups(1_000)
    assert tally.correct == 1_000


async def test_a_healed_partition_merges_back_into_one_ring(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    # Cut off, each side forgets the other and closes a ring of its own; only the
    # memory of departed peers can find the other ring once the links return.
    cluster = await stable_ring(make_cluster, 50)
    cut = cluster.rng.sample(sorted(cluster.nodes), 15)
    cluster.network.partition(cut)
    await trio.sleep(60)
    assert cluster.ring_errors() != []  # two rings, as the oracle sees it
    cluster.network.heal()
    await cluster.wait_until(cluster.is_converged, 300)
    tally = await cluster.run_lookups(1_000)
    assert tally.correct == 1_000
