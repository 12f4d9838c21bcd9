"""Property tests (issue 13): random schedules of joins, crashes, graceful leaves
and partitions, played on real nodes in the simulated network, while lookups run.

After quiescence the ring must be one correct cycle with every successor list
right (Zave's invariants, checked against the oracle), and lookups must all name
the true owner. During the run no lookup may name a wrong owner unless a
partition was in force, when the two sides cannot agree and the tally counts
it. Each example is its own trio run on its own MockClock, passed to trio.run
directly, so no fixture can leave it on the real clock."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from dht.errors import ChordError, LookupFailed
from dht.simcluster import LookupTally, SimCluster
from dht.simnet import SimNetwork

from tools.sim import seed_trio_scheduler

from .conftest import FAST

START_NODES = 6
MIN_LIVE = 3
QUIESCENCE_BUDGET = 900.0  # virtual seconds; a healed partition is found within DepartedPeers.max_retry


@dataclass(frozen=True)
class Op:
    kind: str  # join, crash, leave or partition
    pick: int  # which live node (modulo their number), or how many to cut off
    wait: float  # virtual seconds before the next operation
    span: float = 0.0  # how long a partition lasts


ops = st.one_of(
    st.builds(Op, st.just("join"), st.integers(0, 99), st.floats(0.0, 5.0)),
    st.builds(Op, st.just("crash"), st.integers(0, 99), st.floats(0.0, 5.0)),
    st.builds(Op, st.just("leave"), st.integers(0, 99), st.floats(0.0, 5.0)),
    st.builds(Op, st.just("partition"), st.integers(1, 3), st.floats(0.0, 5.0), st.floats(1.0, 30.0)),
)


async def keep_looking_up(cluster: SimCluster, tally: LookupTally, rng: random.Random) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(0.25)
            nursery.start_soon(judge_one_lookup, cluster, tally, rng.getrandbits(cluster.config.bits))


async def judge_one_lookup(cluster: SimCluster, tally: LookupTally, key: int) -> None:
    node = cluster.random_node()
    right_at_start = cluster.right_owners(key)
    try:
        result = await node.lookup(key)
    except LookupFailed:
        tally.failed += 1
        return
    if node.me.address in cluster.nodes:
        correct = cluster.judge(key, result.owner.id, right_at_start)
        tally.correct += correct
        tally.wrong += not correct


async def play(cluster: SimCluster, schedule: list[Op], rng: random.Random) -> None:
    for op in schedule:
        live = sorted(cluster.nodes)
        if op.kind == "join":
            with contextlib.suppress(ChordError):  # a join may fail while the ring is cut; it leaves no trace
                await cluster.add_node()
        elif op.kind in ("crash", "leave") and len(live) > MIN_LIVE:
            address = live[op.pick % len(live)]
            if op.kind == "crash":
                cluster.crash(address)
            else:
                await cluster.leave(address)
        elif op.kind == "partition":
            cut = rng.sample(live, min(op.pick, len(live) - 1))
            cluster.network.partition(cut)
            await trio.sleep(op.span)
            cluster.network.heal()
        await trio.sleep(op.wait)


def run_schedule(schedule: list[Op], seed: int) -> tuple[LookupTally, LookupTally, bool]:
    """Play the schedule with lookups running; return the lookups during it, those
    after quiescence, and whether quiescence came."""
    during, after = LookupTally(), LookupTally()
    quiet = [False]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            network = SimNetwork(latency=0.01, jitter=0.1, rng=random.Random(seed + 1))
            cluster = SimCluster(nursery, network, FAST, random.Random(seed))
            await cluster.grow(START_NODES)
            await cluster.wait_until(cluster.is_converged, 120.0)
            async with trio.open_nursery() as load:
                load.start_soon(keep_looking_up, cluster, during, random.Random(seed + 2))
                await play(cluster, schedule, random.Random(seed + 3))
                load.cancel_scope.cancel()

            def settled() -> bool:
                return cluster.is_converged() and cluster.successor_lists_right()

            with trio.move_on_after(QUIESCENCE_BUDGET):
                await cluster.wait_until(settled, QUIESCENCE_BUDGET, poll=1.0)
                quiet[0] = True
            if quiet[0]:
                after.__dict__.update((await cluster.run_lookups(50)).__dict__)
            nursery.cancel_scope.cancel()

    seed_trio_scheduler(seed)  # an example replays exactly, whatever ran before it
    trio.run(main, clock=MockClock(autojump_threshold=0))
    return during, after, quiet[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(ops, min_size=1, max_size=8), seed=st.integers(0, 2**16))
def test_after_any_schedule_the_ring_is_one_correct_cycle(schedule: list[Op], seed: int) -> None:
    during, after, quiet = run_schedule(schedule, seed)
    assert quiet, "the ring did not settle into one correct cycle with right successor lists"
    assert after.correct == 50, f"after quiescence: {after}"
    if not any(op.kind == "partition" for op in schedule):
        assert during.wrong == 0, f"a lookup named a wrong owner with no partition in force: {during}"
