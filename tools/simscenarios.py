"""The failure and churn scenarios of `chordcdn sim`, and what they measure.

Owns load (lookups as a Poisson process), churn (joins and departures as a Poisson
process) and the recorder that samples, every interval of virtual time, how the
ring is doing against the oracle: lookup outcomes, live nodes, block availability
and permanent loss.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import trio

from dht.errors import ChordError, LookupFailed
from dht.simcluster import ConvergenceTimeout, LookupTally, SimCluster

from .simevents import Crash, Event, Partition

if TYPE_CHECKING:
    from .sim import SimOptions

BLOCK_SIZE = 1024
MIN_LIVE = 4


@dataclass
class Recorder:
    """Lookup outcomes as they finish, and a row of figures every `interval`."""

    cluster: SimCluster
    keys: set[bytes]
    interval: float
    tally: LookupTally = field(default_factory=LookupTally)
    rows: list[dict[str, Any]] = field(default_factory=list)
    lost: set[bytes] = field(default_factory=set)
    progress: Callable[[float, float], None] | None = None  # (virtual now, virtual end)
    _since: LookupTally = field(default_factory=LookupTally)
    _messages: int = 0

    def lookup_done(self, correct: bool | None, hops: int, latency: float, timeouts: int) -> None:
        for tally in (self.tally, self._since):
            if correct is None:
                tally.failed += 1
                continue
            tally.correct += correct
            tally.wrong += not correct
            tally.hops.append(hops)
            tally.latencies.append(latency)
            tally.timeouts += timeouts

    def sample(self) -> dict[str, Any]:
        copies = self.cluster.live_copies(self.keys)
        self.lost.update(key for key, count in copies.items() if count == 0)
        messages = self.cluster.network.stats.messages
        since, self._since = self._since, LookupTally()
        row = {
            "t": round(trio.current_time(), 3),
            "live_nodes": len(self.cluster.nodes),
            "lookups": since.total,
            "correct": since.correct,
            "wrong": since.wrong,
            "failed": since.failed,
            "availability": (sum(1 for n in copies.values() if n) / len(copies)) if copies else 1.0,
            "blocks_lost": len(self.lost),
            "messages": messages - self._messages,
        }
        self._messages = messages
        self.rows.append(row)
        return row

    async def sample_until(self, end: float, at_first_sample: Callable[[], None] = lambda: None) -> None:
        """Sample every interval until `end`, calling at_first_sample right after the
        first sample. Both happen in this one task, in this order, so no tie between
        timers can reorder them and a seed always gives the same run."""
        deadline = trio.current_time() + self.interval
        first = True
        while deadline <= end + 1e-9:
            await trio.sleep_until(deadline)
            self.sample()
            if self.progress is not None:
                self.progress(deadline, end)
            if first:
                at_first_sample()
                first = False
            deadline += self.interval


async def lookup_load(cluster: SimCluster, rate: float, recorder: Recorder, rng: random.Random, deadline: float | None = None) -> None:
    """Start lookups of random keys from random live nodes at `rate` per second,
    each failed unless answered within `deadline` seconds (by default the node's
    lookup timeout)."""
    if rate <= 0:
        return
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(rng.expovariate(rate))
            if cluster.nodes:
                nursery.start_soon(_one_lookup, cluster, recorder, rng.getrandbits(cluster.config.bits), deadline)


async def _one_lookup(cluster: SimCluster, recorder: Recorder, key: int, deadline: float | None) -> None:
    node = cluster.random_node()
    started, right_at_start = trio.current_time(), cluster.right_owners(key)
    try:
        result = await node.lookup(key, deadline)
    except LookupFailed:
        recorder.lookup_done(None, 0, 0.0, 0)
        return
    if node.me.address not in cluster.nodes:
        return  # the asker itself left meanwhile: no verdict
    recorder.lookup_done(cluster.judge(key, result.owner.id, right_at_start), result.hops, trio.current_time() - started, result.timeouts)


async def churn(cluster: SimCluster, rate: float, graceful_fraction: float, rng: random.Random, counts: dict[str, int]) -> None:
    """Joins and departures as a Poisson process of `rate` events per second, half
    each, so the ring keeps its size; a departure is graceful with the given odds."""
    if rate <= 0:
        return
    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(rng.expovariate(rate))
            if rng.random() < 0.5 or len(cluster.nodes) <= MIN_LIVE:
                nursery.start_soon(_join, cluster, counts)
            elif rng.random() < graceful_fraction:
                nursery.start_soon(_leave, cluster, rng.choice(sorted(cluster.nodes)), counts)
            else:
                cluster.crash(rng.choice(sorted(cluster.nodes)))
                counts["crashes"] += 1


async def _join(cluster: SimCluster, counts: dict[str, int]) -> str | None:
    try:
        node = await cluster.add_node()
    except ChordError:
        counts["failed_joins"] += 1
        return None
    counts["joins"] += 1
    return node.me.address


PARETO_SHAPE = 2.0


def session_sampler(median: float, distribution: str, rng: random.Random) -> tuple[Callable[[], float], float]:
    """A function drawing session lengths with the given median, and their mean."""
    if distribution == "exponential":
        rate = math.log(2) / median
        return (lambda: rng.expovariate(rate)), 1 / rate
    scale = median / 2 ** (1 / PARETO_SHAPE)  # Pareto median = scale · 2^(1/shape)
    return (lambda: scale * rng.paretovariate(PARETO_SHAPE)), PARETO_SHAPE * scale / (PARETO_SHAPE - 1)


async def session_churn(
    cluster: SimCluster, median: float, distribution: str, graceful_fraction: float, rng: random.Random, counts: dict[str, int]
) -> None:
    """Every node stays for a drawn session, then departs; joins arrive as a Poisson
    process at N / mean session, so the ring keeps its size on average."""
    draw, mean = session_sampler(median, distribution, rng)
    target = len(cluster.nodes)

    async def live(address: str) -> None:
        await trio.sleep(draw())
        if address not in cluster.nodes or len(cluster.nodes) <= MIN_LIVE:
            return
        if rng.random() < graceful_fraction:
            await _leave(cluster, address, counts)
        else:
            cluster.crash(address)
            counts["crashes"] += 1

    async def join_and_live() -> None:
        address = await _join(cluster, counts)
        if address is not None:
            await live(address)

    async with trio.open_nursery() as nursery:
        for address in sorted(cluster.nodes):
            nursery.start_soon(live, address)
        while True:
            await trio.sleep(rng.expovariate(target / mean))
            nursery.start_soon(join_and_live)


async def _leave(cluster: SimCluster, address: str, counts: dict[str, int]) -> None:
    if address in cluster.nodes:
        counts["leaves"] += 1  # it is out of the ring from the moment it starts leaving
        await cluster.leave(address)


async def store_blocks(cluster: SimCluster, count: int, rng: random.Random, window: int = 64) -> set[bytes]:
    """Put `count` random blocks through the ring; return their keys."""
    keys: set[bytes] = set()
    limiter = trio.Semaphore(window)

    async def put(data: bytes) -> None:
        async with limiter:
            keys.add(await cluster.client().put_block(data))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(put, rng.randbytes(BLOCK_SIZE))
    return keys


Progress = Callable[[float, float], None]


async def play_events(cluster: SimCluster, events: list[Event], rng: random.Random, counts: dict[str, int]) -> None:
    """Apply fixed events at their times (seconds after this task starts)."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for event in events:
            await trio.sleep_until(start + event.at)
            if isinstance(event, Crash):
                live = sorted(cluster.nodes)
                chosen = [a for a in event.addresses if a in cluster.nodes] or rng.sample(live, min(event.count, len(live)))
                for address in chosen:
                    cluster.crash(address)
                counts["crashes"] += len(chosen)
            else:
                nursery.start_soon(_partition, cluster, event, rng)


async def _partition(cluster: SimCluster, event: Partition, rng: random.Random) -> None:
    live = sorted(cluster.nodes)
    cut = list(event.addresses) or rng.sample(live, max(1, round(event.fraction * len(live))))
    cluster.network.partition(cut)
    await trio.sleep(event.span)
    cluster.network.heal()


def summarize(recorder: Recorder, cluster: SimCluster) -> dict[str, Any]:
    rows = recorder.rows
    summary = recorder.tally.summary()
    summary.update(
        blocks=len(recorder.keys),
        blocks_lost=len(recorder.lost),
        min_availability=min((row["availability"] for row in rows), default=1.0),
        repair_bytes=cluster.repair_bytes(),
        mean_live_nodes=sum(row["live_nodes"] for row in rows) / len(rows) if rows else len(cluster.nodes),
    )
    return summary


async def fail_scenario(cluster: SimCluster, options: "SimOptions", progress: Progress | None = None) -> dict[str, Any]:
    """Crash a fraction of the nodes at once; watch lookups and data as the ring heals."""
    from .sim import build_ring

    rng = random.Random(options.seed + 2)
    built = await build_ring(cluster, options)
    keys = await store_blocks(cluster, options.blocks, rng)
    recorder = Recorder(cluster, keys, options.sample_interval, progress=progress)
    converged_after: list[float] = []
    failed_at = trio.current_time() + options.sample_interval
    crashed = trio.Event()

    def crash() -> None:
        for address in rng.sample(sorted(cluster.nodes), round(options.fail_fraction * len(cluster.nodes))):
            cluster.crash(address)
        crashed.set()

    async def watch_convergence() -> None:
        await crashed.wait()  # not a timer: one falling due with the crash might run first
        try:
            converged_after.append(await cluster.wait_until(cluster.is_converged, options.duration, poll=1.0))
        except ConvergenceTimeout:
            pass  # reported as None

    async with trio.open_nursery() as load:
        load.start_soon(lookup_load, cluster, options.lookup_rate, recorder, rng, options.lookup_deadline or None)
        load.start_soon(watch_convergence)
        load.start_soon(play_events, cluster, list(options.events), rng, {"crashes": 0})
        await recorder.sample_until(failed_at + options.duration, crash)
        load.cancel_scope.cancel()
    return {
        **built,
        **summarize(recorder, cluster),
        "converged_after": converged_after[0] if converged_after else None,
        "series": recorder.rows,
        "hops": recorder.tally.hops,
    }


async def churn_scenario(cluster: SimCluster, options: "SimOptions", progress: Progress | None = None) -> dict[str, Any]:
    """Joins and departures at --rate for --duration, with lookups and stored blocks."""
    from .sim import build_ring

    rng = random.Random(options.seed + 2)
    built = await build_ring(cluster, options)
    keys = await store_blocks(cluster, options.blocks, rng)
    recorder = Recorder(cluster, keys, options.sample_interval, progress=progress)
    counts = {"joins": 0, "leaves": 0, "crashes": 0, "failed_joins": 0}
    end = trio.current_time() + options.duration
    async with trio.open_nursery() as load:
        load.start_soon(lookup_load, cluster, options.lookup_rate, recorder, rng, options.lookup_deadline or None)
        load.start_soon(play_events, cluster, list(options.events), rng, counts)
        if options.session_median:
            load.start_soon(
                session_churn, cluster, options.session_median, options.sessions, options.graceful_fraction, rng, counts
            )
        else:
            load.start_soon(churn, cluster, options.rate, options.graceful_fraction, rng, counts)
        await recorder.sample_until(end)
        load.cancel_scope.cancel()
    return {**built, **summarize(recorder, cluster), **counts, "series": recorder.rows, "hops": recorder.tally.hops}
