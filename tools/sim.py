"""`chordcdn sim`: real node code on the simulated network, in virtual time.

Owns scenarios and their reports. A scenario gets a SimCluster and the options and
returns its figures; `run` wraps it with set-up, timing and the common fields of
the JSON summary. `static` measures path lengths on a stabilized ring; the churn
scenarios join the SCENARIOS table later.
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable

import trio
import trio.testing

from dht.node import NodeConfig
from dht.simcluster import SimCluster
from dht.simnet import SimNetwork

BUILDS = ("ideal", "join")


@dataclass(frozen=True)
class SimOptions:
    scenario: str = "static"
    nodes: int = 1024
    lookups: int = 10_000
    seed: int = 1
    bits: int = 256
    build: str = "ideal"
    latency: float = 0.01
    parallel: int = 100
    stabilize_interval: float = 30.0
    successors: int = 8

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose from {', '.join(sorted(SCENARIOS))}")
        if self.build not in BUILDS:
            raise ValueError(f"unknown build {self.build!r}; choose from {', '.join(BUILDS)}")
        if self.nodes < 1 or self.lookups < 0 or self.parallel < 1:
            raise ValueError("nodes and parallel must be at least 1, lookups at least 0")
        if self.nodes > 2**self.bits // 2:
            raise ValueError(f"{self.nodes} nodes do not fit a {self.bits}-bit ring")

    def node_config(self) -> NodeConfig:
        return NodeConfig.every(
            self.stabilize_interval,
            bits=self.bits,
            successor_list_size=self.successors,
            rpc_timeout=max(0.5, 50 * self.latency),
            lookup_timeout=max(10.0, 500 * self.latency),
        )


async def build_ring(cluster: SimCluster, options: SimOptions) -> dict[str, Any]:
    """Bring up `options.nodes` nodes: with the oracle's ideal routing state, or by
    real joins followed by stabilization until successors and fingers are right."""
    started = trio.current_time()
    if options.build == "ideal":
        cluster.add_stable_nodes(options.nodes)
        await cluster.start_all()
        return {"build_virtual_seconds": 0.0}
    await cluster.grow(options.nodes)
    budget = 200 * options.stabilize_interval
    ring = await cluster.wait_until(cluster.is_converged, budget, poll=options.stabilize_interval / 2)
    await cluster.wait_until(cluster.fingers_converged, budget, poll=options.stabilize_interval)
    return {"ring_converged_after": ring, "build_virtual_seconds": trio.current_time() - started}


async def static_scenario(cluster: SimCluster, options: SimOptions) -> dict[str, Any]:
    built = await build_ring(cluster, options)
    messages_before = cluster.network.stats.messages
    tally = await cluster.run_lookups(options.lookups, options.parallel)
    return {
        **built,
        **tally.summary(),
        "half_log2_n": 0.5 * math.log2(options.nodes),
        "lookup_messages": cluster.network.stats.messages - messages_before,
    }


Scenario = Callable[[SimCluster, SimOptions], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {"static": static_scenario}


def _seed_trio_scheduler(seed: int) -> None:
    """trio shuffles each batch of runnable tasks with a module-level Random; seeding
    it (a private attribute, so guarded) makes a run repeat exactly."""
    scheduler_random = getattr(trio._core._run, "_r", None)
    if isinstance(scheduler_random, random.Random):
        scheduler_random.seed(seed)


def run(options: SimOptions) -> dict[str, Any]:
    """Run one scenario under a MockClock and return its JSON-ready summary."""
    summary: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            network = SimNetwork(latency=options.latency, rng=random.Random(options.seed + 1))
            cluster = SimCluster(nursery, network, options.node_config(), random.Random(options.seed))
            summary.update(await SCENARIOS[options.scenario](cluster, options))
            summary["virtual_seconds"] = trio.current_time()
            summary["messages"] = network.stats.messages
            nursery.cancel_scope.cancel()

    _seed_trio_scheduler(options.seed)
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)  # thousands of long-lived node objects
    started = time.perf_counter()
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        gc.set_threshold(*thresholds)
    wall = time.perf_counter() - started
    nodes_seconds = options.nodes * max(summary["virtual_seconds"], 1e-9)
    return {
        **asdict(options),
        **summary,
        "msgs_per_node_per_s": summary["messages"] / nodes_seconds,
        "wall_seconds": wall,
    }
