"""`chordcdn sim`: real node code on the simulated network, in virtual time.

Owns the options and the run. A scenario gets a SimCluster and the options and
returns its figures; `run` wraps it with set-up, timing and the common fields of
the JSON summary. `static` measures path lengths on a stabilized ring; `fail` and
`churn` (tools/simscenarios.py) crash nodes or churn the ring while lookups run and
blocks are stored, sampling the ring against the oracle over time.
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable

import trio

from dht.addresses import MAX_VNODES, host_of
from dht.ids import IdSpace
from dht.latency import MODELS, make_model, round_trip_percentiles
from dht.loadbalance import keys_per_machine, load_figures
from dht.node import LOOKUP_MODES, NodeConfig
from dht.simcluster import SimCluster
from dht.simnet import SimNetwork
from dht.storage import StorageConfig

from .simevents import Event
from .simscenarios import Progress, churn_scenario, fail_scenario

BUILDS = ("ideal", "join")
SESSION_DISTRIBUTIONS = ("exponential", "pareto")
BYTE_KINDS = (("maintenance", "maintenance"), ("lookup", "lookup"), ("data", "repair"))
LATENCY_JITTER = 0.1  # ±10% per message; also keeps timer deadlines distinct (see SimNetwork)


@dataclass(frozen=True)
class SimOptions:
    scenario: str = "static"
    nodes: int = 1024
    lookups: int = 10_000
    seed: int = 1
    bits: int = 256
    build: str = "ideal"
    latency: float = 0.01  # one way, for the constant model; the floor of call timeouts for both
    latency_model: str = "constant"
    lookup_deadline: float = 0.0  # seconds a measured lookup may take (0: the node's lookup timeout)
    lookup_mode: str = "iterative"
    proximity_fingers: bool = True
    warmup: float = 0.0  # static: virtual seconds of maintenance between the build and the lookups
    vnodes: int = 1  # ring positions per node (dht.vnodes)
    parallel: int = 100
    stabilize_interval: float = 30.0
    min_stabilize_interval: float = 0.0  # adapt to churn down to this (dht.pace); 0: fixed intervals
    successors: int = 8
    duration: float = 600.0
    fail_fraction: float = 0.2
    rate: float = 0.05
    lookup_rate: float = 1.0
    blocks: int = 1000
    replicas: int = 3
    graceful_fraction: float = 0.0
    sample_interval: float = 10.0
    repair_interval: float = 30.0
    session_median: float = 0.0  # churn by session lengths instead of --rate (0: off)
    sessions: str = "exponential"
    events: tuple[Event, ...] = ()  # fixed events from a scenario file (fail and churn)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose from {', '.join(sorted(SCENARIOS))}")
        if self.build not in BUILDS:
            raise ValueError(f"unknown build {self.build!r}; choose from {', '.join(BUILDS)}")
        if self.nodes < 1 or self.lookups < 0 or self.parallel < 1:
            raise ValueError("nodes and parallel must be at least 1, lookups at least 0")
        if self.nodes > 2**self.bits // 2:
            raise ValueError(f"{self.nodes} nodes do not fit a {self.bits}-bit ring")
        if not 0 <= self.fail_fraction < 1 or not 0 <= self.graceful_fraction <= 1:
            raise ValueError("fail and graceful fractions must lie in [0, 1) and [0, 1]")
        timing = (self.duration, self.sample_interval, self.rate, self.lookup_rate)
        if not all(math.isfinite(value) for value in timing):
            raise ValueError("durations and rates must be finite numbers")
        if self.duration <= 0 or self.sample_interval <= 0 or self.rate < 0 or self.lookup_rate < 0:
            raise ValueError("duration and sample interval must be positive; rates must not be negative")
        if self.sessions not in SESSION_DISTRIBUTIONS:
            raise ValueError(f"sessions must be one of {', '.join(SESSION_DISTRIBUTIONS)}")
        if not (math.isfinite(self.session_median) and self.session_median >= 0):
            raise ValueError("session median must be a finite number of seconds, or 0 for off")
        if not (math.isfinite(self.min_stabilize_interval) and self.min_stabilize_interval >= 0):
            raise ValueError("the shortest stabilize interval must be a number of seconds, or 0 for fixed intervals")
        if self.events and self.scenario == "static":
            raise ValueError("fixed events need the fail or churn scenario")
        if self.latency_model not in MODELS:
            raise ValueError(f"unknown latency model {self.latency_model!r}; choose from {', '.join(MODELS)}")
        if not (math.isfinite(self.lookup_deadline) and self.lookup_deadline >= 0):
            raise ValueError("lookup deadline must be a finite number of seconds, or 0 for the node's own")
        if self.lookup_mode not in LOOKUP_MODES:
            raise ValueError(f"unknown lookup mode {self.lookup_mode!r}; choose from {', '.join(LOOKUP_MODES)}")
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise ValueError("warm-up must be a finite number of seconds")
        if self.blocks < 0 or self.replicas < 1:
            raise ValueError("blocks must not be negative and replicas must be at least 1")
        if not 1 <= self.vnodes <= MAX_VNODES:
            raise ValueError(f"vnodes must be in 1..{MAX_VNODES}")

    def storage(self) -> StorageConfig | None:
        """Static rings store nothing; the other scenarios store --blocks blocks."""
        if self.scenario == "static":
            return None
        return StorageConfig(replicas=self.replicas, repair_interval=self.repair_interval)

    def node_config(self) -> NodeConfig:
        return NodeConfig.every(
            self.stabilize_interval,
            bits=self.bits,
            successor_list_size=self.successors,
            rpc_timeout=max(0.5 if self.latency_model == "constant" else 1.0, 50 * self.latency),
            min_rpc_timeout=5 * self.latency,
            min_stabilize_interval=min(self.min_stabilize_interval or self.stabilize_interval, self.stabilize_interval),
            lookup_timeout=max(10.0, 500 * self.latency),
            lookup_mode=self.lookup_mode,
            proximity_fingers=self.proximity_fingers,
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


async def static_scenario(cluster: SimCluster, options: SimOptions, progress: Progress | None = None) -> dict[str, Any]:
    built = await build_ring(cluster, options)
    await trio.sleep(options.warmup)
    messages_before = cluster.network.stats.messages
    tally = await cluster.run_lookups(options.lookups, options.parallel, options.lookup_deadline or None)
    return {
        **built,
        **tally.summary(),
        **static_load(cluster, options),
        "hops": tally.hops,
        "half_log2_n": 0.5 * math.log2(options.nodes),
        "lookup_messages": cluster.network.stats.messages - messages_before,
    }


def static_load(cluster: SimCluster, options: SimOptions) -> dict[str, float]:
    """Keys per node for `options.blocks` random block keys, each owned by the
    position that follows it (the Chord paper's load-balance measure, counted per
    node with its virtual nodes together): empty without --blocks."""
    if not options.blocks:
        return {}
    rng = random.Random(options.seed + 5)
    space = IdSpace(options.bits)
    keys = (space.position(rng.randbytes(32)) for _ in range(options.blocks))
    positions = sorted((node.me.id, host_of(node.me.address)) for node in cluster.positions.values())
    return load_figures(keys_per_machine(positions, keys).values())


Scenario = Callable[[SimCluster, SimOptions, Progress | None], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {"static": static_scenario, "fail": fail_scenario, "churn": churn_scenario}


def seed_trio_scheduler(seed: int) -> None:
    """trio shuffles each batch of runnable tasks with a module-level Random; seeding
    it (a private attribute, so guarded) makes a run repeat exactly."""
    scheduler_random = getattr(trio._core._run, "_r", None)
    if isinstance(scheduler_random, random.Random):
        scheduler_random.seed(seed)


def run(options: SimOptions) -> dict[str, Any]:
    """Run one scenario under a MockClock and return its JSON-ready summary."""
    return run_detailed(options)[0]


def _bytes_per_node_per_s(by_kind: dict[str, int], nodes_seconds: float) -> dict[str, float]:
    """Wire bytes per live node per virtual second: in all, and for routing
    maintenance (a node's own finger and join lookups included), lookups, and
    data repair (`dht.messages.traffic_kind`)."""
    rates = {f"{name}_bytes_per_node_per_s": round(by_kind.get(kind, 0) / nodes_seconds, 1) for kind, name in BYTE_KINDS}
    return {"bytes_per_node_per_s": round(sum(by_kind.values()) / nodes_seconds, 1), **rates}


def run_detailed(
    options: SimOptions, progress: Progress | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """Run one scenario; return its summary, its time series and every lookup's hops.
    `progress(now, end)` is called in virtual time as the scenario advances."""
    summary: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            model = make_model(options.latency_model, options.latency, options.seed)
            network = SimNetwork(latency=model, jitter=LATENCY_JITTER, rng=random.Random(options.seed + 1))
            cluster = SimCluster(nursery, network, options.node_config(), random.Random(options.seed), options.storage(), options.vnodes)
            summary.update(await SCENARIOS[options.scenario](cluster, options, progress))
            summary["virtual_seconds"] = trio.current_time()
            summary["messages"] = network.stats.messages
            summary["wire_bytes"] = dict(network.stats.bytes_by_kind)
            rtts = round_trip_percentiles(model, sorted(cluster.nodes), random.Random(options.seed + 3))
            summary["median_rtt"], summary["p99_rtt"] = rtts
            nursery.cancel_scope.cancel()

    seed_trio_scheduler(options.seed)
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)  # thousands of long-lived node objects
    started = time.perf_counter()
    try:
        from trio.testing import MockClock  # not at the top: it imports pytest, 0.2 s on every command

        trio.run(main, clock=MockClock(autojump_threshold=0))
    finally:
        gc.set_threshold(*thresholds)
    wall = time.perf_counter() - started
    series, hops = summary.pop("series", []), summary.pop("hops", [])
    wire_bytes = summary.pop("wire_bytes", {})
    nodes_seconds = summary.get("mean_live_nodes", options.nodes) * max(summary["virtual_seconds"], 1e-9)
    report = {
        **asdict(options),
        "blocks": 0,
        "blocks_lost": 0,
        "min_availability": 1.0,
        **summary,
        "msgs_per_node_per_s": summary["messages"] / nodes_seconds,
        **_bytes_per_node_per_s(wire_bytes, nodes_seconds),
        "wall_seconds": wall,
    }
    return report, series, hops
