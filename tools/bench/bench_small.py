"""Puts and gets of small values on 32 nodes in one process: ours with mutual TLS, ours
in plaintext, and kademlia.

What it measures: for values of 1,024 B, 8,000 B and 100,000 B, how many puts and
gets per second one node can do, and their median and p99 latency, one at a time
and with 32 in flight. Ours is a ring of 32 chordcdn nodes in ONE trio process on
127.0.0.1, each as `tools.noderun.serve_local_node` runs it (its own node
certificate from a throwaway cluster CA, or `--insecure`-style plaintext; r = 3;
blocks in memory). A value is one block under key = SHA-256(value): node A puts it
(`DhtClient.for_node(A).put_block`: a lookup of A's, then a copy to each of the 3
replicas), node B, which did not put it, gets it (`DhtClient.for_node(B).get_block`:
a lookup of B's, then the first replica). The peer is 32 `kademlia.network.Server`s
(PyPI; UDP via rpcudp, asyncio; k = 20, so 20 copies) in ONE asyncio process on
127.0.0.1: `set(key, value)` on server A, `get(key)` on server B.

How: each system runs in a worker process of its own (this module with --worker),
so trio and asyncio never share a loop; the systems take turns round by round (the
order rotates), each round on a freshly built cluster. Ours waits until every
node's predecessor and first r−1 successors are the true ones (and, with a shorter
deadline, every finger), then has every node ping every other once, so that the
links (and TLS sessions) a ring that has run for a while holds are open, and warms
up with untimed puts and gets. kademlia, which has no links to open, gets a fresh
set of servers for each size and mode, each server bootstrapped twice, so that the
UDP losses of one phase (and the re-announcements of every stored value to the peers
it dropped and found again) do not carry over to the next. Each size and mode puts
its own fresh random values from A, then gets the stored ones from B, recording each
operation's latency (`perf_counter_ns`) and every failure; a get must return the
very bytes put. Every operation has a deadline; a mode stops after 25 failures in a
row (3 x the operations in flight, if more). A get whose put failed is not tried and
counts as failed.

The report gives, per system, size, mode and operation, the median across rounds
of ops/s, p50 and p99 (ms), and the failures; the ratios of get and put rates
ours/kademlia (the median of per-round ratios); and whether the bars hold: with
mutual TLS, gets ≥ 1.0× kademlia's rate (every size and mode where at most 1% of
kademlia's gets failed) and get p99 ≤ 2 ms (one in flight: with 32 in flight
latency is mostly queueing behind the other 31). As a shared machine's other work
moves wall-clock figures a lot, it also gives the CPU time per operation (the whole
process: the client and all 32 nodes) and, one in flight, each operation's own CPU
time: every node runs in the one thread, so that is the latency an idle machine
would show, here also less the collector's share (`gc.callbacks` time every
collection).

kademlia cannot store 100,000 B values: rpcudp refuses a request over 8 KiB, and
no UDP datagram carries 100,000 B. Its failures are counted and shown beside ours.
Gets from B are answered from B's own store without any network call when B holds
one of the 20 copies (about 20 of 32 times); the report says how often, and gives
the figures of the gets that needed the network apart.

    python -m tools.bench.bench_small [--rounds 3] [--values 1000] [--big-values 200] [--quick] [--json]

--ours-gc freeze|off runs our workers with the collector frozen (`gc.freeze()`) or
off after the warm-up, to show what garbage collection costs; the default leaves it
as a node runs it. kademlia is the optional extra "bench"; without it the report
gives our figures alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import hashlib
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, AsyncContextManager, AsyncIterator, Awaitable, Callable, Iterator, Sequence

import trio

from dht.client import DhtClient
from dht.errors import ChordError
from dht.identity import Role
from dht.node import ChordNode, NodeConfig
from dht.storage import StorageConfig
from dht.tls import TlsCredentials
from tools.argtypes import integer, positive
from tools.bench.bench_rpc import kademlia_version, progress, stop
from tools.bench.common import run_interruptibly
from tools.cluster import LocalCluster
from tools.noderun import serve_local_node

ROOT = Path(__file__).resolve().parents[2]
NODES = 32
REPLICAS = 3
SMALL_SIZES = (1024, 8000)  # --values of each
BIG_SIZE = 100_000  # --big-values of it
MODES = {"serial": 1, "concurrent": 32}  # mode name -> operations in flight
OPERATIONS = ("put", "get")
SYSTEMS = ("tls", "plaintext", "kademlia")
LABELS = {"tls": "ours, mutual TLS", "plaintext": "ours, plaintext", "kademlia": "kademlia"}
RATE_BAR = 1.0  # TLS get ops/s over kademlia's
MAX_PEER_FAILURES = 0.01  # past this share of failed kademlia operations, its rate is not compared
P99_BAR_MS = 2.0  # TLS get p99, one in flight
OP_TIMEOUT = 10.0  # seconds for one put or get
GIVE_UP_AFTER = 25  # failures in a row that end a mode (at least 3 x the operations in flight)
WARMUP_VALUES = 128
RING_TIMEOUT = 90.0  # seconds for predecessors and successors to be right
FINGER_TIMEOUT = 30.0  # further seconds for the fingers; the run goes on without them
KADEMLIA_SETUP_TIMEOUT = 60.0
WORKER_GRACE = 30.0  # seconds past a worker's own lifetime before it is stopped
GC_MODES = ("default", "freeze", "off")
MAX_ROUNDS, MAX_VALUES = 50, 100_000


class BenchError(Exception):
    """A run that cannot go on: a worker failed, or a ring did not form."""


class OperationFailed(Exception):
    """A put or get that finished but did not do its job."""


class OperationTimeout(Exception):
    """A put or get past OP_TIMEOUT."""


@dataclass(frozen=True)
class Plan:
    """What every worker runs: (value size, values per mode) in order, and for ours the collector mode."""

    sizes: tuple[tuple[int, int], ...]
    ours_gc: str = "default"
    lifetime: float = 900.0


# -- measuring, framework-neutral ------------------------------------------------------


Gather = Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[None]]


class GcWatch:
    """Every garbage collection while active: its generation and how long it paused the process."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int]] = []  # (generation, nanoseconds)
        self.cpu_ns = 0  # CPU time spent collecting, so far
        self._started = self._started_cpu = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started, self._started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        else:
            self.pauses.append((info["generation"], time.perf_counter_ns() - self._started))
            self.cpu_ns += time.thread_time_ns() - self._started_cpu

    @contextlib.contextmanager
    def active(self) -> Iterator["GcWatch"]:
        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)

    def figures(self) -> dict[str, Any]:
        return {
            "collections": [sum(1 for generation, _ in self.pauses if generation == g) for g in range(3)],
            "pause_ms_total": sum(ns for _, ns in self.pauses) / 1e6,
            "pause_ms_max": max((ns for _, ns in self.pauses), default=0) / 1e6,
            "gen2_pause_ms_max": max((ns for g, ns in self.pauses if g == 2), default=0) / 1e6,
        }


@dataclass
class Sample:
    """One operation in one mode: latencies of the successes, the failures, wall time."""

    attempted: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    cpu_latencies_ns: list[int] = field(default_factory=list)  # one in flight: CPU time during each success
    gc_free_cpu_latencies_ns: list[int] = field(default_factory=list)  # the same less the collector's share
    failures: int = 0
    not_attempted: int = 0  # left after too many failures in a row
    not_stored: int = 0  # gets not tried because their put failed
    elapsed: float = 0.0
    cpu: float = 0.0  # seconds of this process's CPU time, every node's work included
    first_error: str | None = None
    gc: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, error: BaseException) -> None:
        self.failures += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"[:300]

    def quantile_ms(self, q: float, latencies: list[int] | None = None) -> float | None:
        """Nearest-rank quantile of the successes' latencies (or of `latencies`), in milliseconds."""
        values = self.latencies_ns if latencies is None else latencies
        if not values:
            return None
        ordered = sorted(values)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1e6

    def figures(self) -> dict[str, Any]:
        ok = len(self.latencies_ns)
        return {
            "ops_per_s": ok / self.elapsed if self.elapsed > 0 else 0.0,
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "ok": ok,
            "failures": self.failures + self.not_attempted + self.not_stored,
            "attempted": self.attempted,
            "not_attempted": self.not_attempted,
            "not_stored": self.not_stored,
            "seconds": self.elapsed,
            "cpu_us_per_op": self.cpu / ok * 1e6 if ok else None,
            "on_cpu_p50_ms": self.quantile_ms(0.5, self.cpu_latencies_ns),
            "on_cpu_p99_ms": self.quantile_ms(0.99, self.cpu_latencies_ns),
            "on_cpu_p99_without_gc_ms": self.quantile_ms(0.99, self.gc_free_cpu_latencies_ns),
            "first_error": self.first_error,
            "gc": self.gc,
            **self.extra,
        }


async def run_operations(
    operation: Callable[[Any], Awaitable[Any]], items: list[Any], width: int, gather: Gather, failure: tuple[type[BaseException], ...]
) -> tuple[Sample, list[tuple[Any, Any, int]]]:
    """Run `operation` on every item, `width` at a time; the sample, and (item, result,
    latency in ns) for each success. With one in flight, each operation's CPU time is
    recorded too (every node runs in this thread, so it is the latency an idle machine
    would show), with and without the collector's share."""
    sample = Sample()
    done: list[tuple[Any, Any, int]] = []
    queue = iter(items)
    in_a_row, give_up = 0, max(GIVE_UP_AFTER, 3 * width)
    watch = GcWatch()

    async def worker() -> None:
        nonlocal in_a_row
        for item in queue:
            if in_a_row >= give_up:
                sample.not_attempted += 1
                continue
            sample.attempted += 1
            start, cpu, collecting = time.perf_counter_ns(), time.thread_time_ns(), watch.cpu_ns
            try:
                result = await operation(item)
            except failure as exc:
                sample.fail(exc)
                in_a_row += 1
                continue
            latency = time.perf_counter_ns() - start
            sample.latencies_ns.append(latency)
            if width == 1:
                on_cpu = time.thread_time_ns() - cpu
                sample.cpu_latencies_ns.append(on_cpu)
                sample.gc_free_cpu_latencies_ns.append(on_cpu - (watch.cpu_ns - collecting))
            done.append((item, result, latency))
            in_a_row = 0

    with watch.active():
        start, cpu = time.perf_counter_ns(), time.process_time()
        await gather([worker] * width)
        sample.elapsed = (time.perf_counter_ns() - start) / 1e9
        sample.cpu = time.process_time() - cpu
    sample.gc = watch.figures()
    return sample, done


@dataclass
class Operations:
    """One system's put (value -> key) and get ((key, value) -> None), each raising on failure."""

    put: Callable[[bytes], Awaitable[bytes]]
    get: Callable[[tuple[bytes, bytes]], Awaitable[None]]
    gather: Gather
    failure: tuple[type[BaseException], ...]
    held_by_getter: Callable[[list[bytes]], set[bytes]] | None = None  # the keys the getter holds a copy of itself


def describe_size(size: int) -> str:
    return f"{size:,} B"


def split_by_holding(done: list[tuple[Any, Any, int]], held: set[bytes]) -> dict[str, Any]:
    """The gets the getter answered from its own copy, and the figures of those that needed the network."""
    remote = Sample(latencies_ns=[latency for (key, _), _, latency in done if key not in held])
    mean_s = sum(remote.latencies_ns) / len(remote.latencies_ns) / 1e9 if remote.latencies_ns else None
    return {
        "getter_holds": len(held),
        "network_gets": len(remote.latencies_ns),
        "network_p50_ms": remote.quantile_ms(0.5),
        "network_p99_ms": remote.quantile_ms(0.99),
        "network_ops_per_s_one_at_a_time": 1 / mean_s if mean_s else None,
    }


async def run_mode(ops: Operations, size: int, count: int, mode: str, label: str) -> dict[str, Any]:
    """Put `count` fresh values from A, then get the stored ones from B, `MODES[mode]` at a time."""
    width = MODES[mode]
    values = [os.urandom(size) for _ in range(count)]
    put, stored = await run_operations(ops.put, values, width, ops.gather, ops.failure)
    pairs = [(key, value) for value, key, _ in stored]
    held = ops.held_by_getter([key for key, _ in pairs]) if ops.held_by_getter is not None else None
    get, got = await run_operations(ops.get, pairs, width, ops.gather, ops.failure)
    get.not_stored = count - len(pairs)
    if held is not None:
        get.extra.update(split_by_holding(got, held))
    figures = {"put": put.figures(), "get": get.figures()}
    progress(f"  {label:9} {describe_size(size):>10} x{width:<2} " + "  ".join(line(op, figures[op]) for op in OPERATIONS))
    return figures


Phase = Callable[[], AsyncContextManager[Operations]]  # the cluster one size and mode runs on


async def warm_up(ops: Operations) -> None:
    """Untimed puts and gets, 32 in flight."""
    warm = [os.urandom(1024) for _ in range(WARMUP_VALUES)]
    _, stored = await run_operations(ops.put, warm, MODES["concurrent"], ops.gather, ops.failure)
    await run_operations(ops.get, [(key, value) for value, key, _ in stored], MODES["concurrent"], ops.gather, ops.failure)


async def run_workload(phase: Phase, plan: Plan, label: str, warm: bool, gc_mode: str = "default") -> list[dict[str, Any]]:
    """The warm-up if asked, then the collector mode, then every size in both modes, each on the cluster `phase` gives."""
    if warm:
        async with phase() as ops:
            await warm_up(ops)
    apply_gc_mode(gc_mode)
    results = []
    for size, count in plan.sizes:
        modes = {}
        for mode in MODES:
            async with phase() as ops:
                modes[mode] = await run_mode(ops, size, count, mode, label)
        results.append({"size": size, "values": count, "modes": modes})
    return results


def line(op: str, fig: dict[str, Any]) -> str:
    failed = f" {fig['failures']} failed" if fig["failures"] else ""
    return f"{op} {fig['ops_per_s']:7,.0f}/s p50 {ms(fig['p50_ms'])} p99 {ms(fig['p99_ms'])} ms{failed}"


def ms(value: float | None) -> str:
    return f"{value:5.2f}" if value is not None else "    -"


def apply_gc_mode(mode: str) -> None:
    if mode == "default":
        return
    gc.collect()
    if mode == "freeze":
        gc.freeze()
    else:
        gc.disable()


# -- ours: one trio process ----------------------------------------------------------


async def gather_trio(calls: list[Callable[[], Awaitable[None]]]) -> None:
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(call)


async def start_ring(nursery: trio.Nursery, credentials: list[TlsCredentials | None]) -> list[ChordNode]:
    """One node per credential, each joining through the first, one after another."""
    ring: list[ChordNode] = []
    for tls in credentials:
        join = ring[0].me.address if ring else None
        serve = functools.partial(serve_local_node, join, NodeConfig(), StorageConfig(replicas=REPLICAS), tls)
        ring.append(await nursery.start(serve))
    return ring


def misplaced_pointers(ring: list[ChordNode]) -> int:
    """How many predecessors and first r−1 successors differ from the true ones."""
    ordered = sorted(ring, key=lambda node: node.me.id)
    count, wanted = len(ordered), min(REPLICAS - 1, len(ordered) - 1)
    wrong = 0
    for index, node in enumerate(ordered):
        expected = [ordered[(index + step) % count].me for step in range(1, wanted + 1)]
        wrong += node.routing.successors[:wanted] != expected
        wrong += node.routing.predecessor != ordered[index - 1].me
    return wrong


def correct_fingers(ring: list[ChordNode]) -> float:
    """The fraction of finger entries that point at the true successor of their start."""
    ids = sorted(node.me.id for node in ring)
    right = total = 0
    for node in ring:
        space = node.space
        for index, finger in enumerate(node.routing.fingers):
            start = space.finger_start(node.me.id, index)
            owner = ids[bisect_left(ids, start) % len(ids)]
            expected = None if owner == node.me.id else owner
            right += (finger.id if finger is not None else None) == expected
            total += 1
    return right / total


async def wait_for_ring(ring: list[ChordNode]) -> tuple[float, float]:
    """Seconds until every predecessor and replica successor is right (BenchError past
    RING_TIMEOUT), then the fraction of right fingers once all are or FINGER_TIMEOUT passed."""
    started = trio.current_time()
    with trio.move_on_after(RING_TIMEOUT):
        while misplaced_pointers(ring):
            await trio.sleep(0.1)
    wrong = misplaced_pointers(ring)
    if wrong:
        raise BenchError(f"the ring was not consistent within {RING_TIMEOUT:g} s: {wrong} pointers wrong")
    ring_seconds = trio.current_time() - started
    with trio.move_on_after(FINGER_TIMEOUT):
        while correct_fingers(ring) < 1.0:
            await trio.sleep(0.25)
    return ring_seconds, correct_fingers(ring)


async def open_links(ring: list[ChordNode]) -> float:
    """Every node pings every other once, opening the links (and TLS sessions) that a ring
    running for a while has; without it, maintenance keeps handshaking through the run.
    Seconds taken; BenchError if a link cannot be opened."""
    started = trio.current_time()
    limiter = trio.CapacityLimiter(MODES["concurrent"])
    failures: list[str] = []

    async def ping(node: ChordNode, other: ChordNode) -> None:
        async with limiter:
            try:
                await node.call(other.me, "ping")
            except ChordError as exc:
                failures.append(f"{node.me.address} to {other.me.address}: {exc}")

    async with trio.open_nursery() as nursery:
        for node in ring:
            for other in ring:
                if other is not node:
                    nursery.start_soon(ping, node, other)
    if failures:
        raise BenchError(f"{len(failures)} links could not be opened; first: {failures[0]}")
    return trio.current_time() - started


async def bounded_trio(operation: Awaitable[Any]) -> Any:
    with trio.move_on_after(OP_TIMEOUT):
        return await operation
    raise OperationTimeout(f"no answer within {OP_TIMEOUT:g} s")


def ours_operations(putter: ChordNode, getter: ChordNode) -> Operations:
    put_client = DhtClient.for_node(putter, replicas=REPLICAS)
    get_client = DhtClient.for_node(getter, replicas=REPLICAS)

    async def put(value: bytes) -> bytes:
        return await bounded_trio(put_client.put_block(value))  # type: ignore[no-any-return]

    async def get(pair: tuple[bytes, bytes]) -> None:
        key, value = pair
        if await bounded_trio(get_client.get_block(key)) != value:
            raise OperationFailed("get_block returned other bytes")

    return Operations(put, get, gather_trio, (ChordError, OperationFailed, OperationTimeout))


def node_credentials(pki: Path | None, count: int) -> list[TlsCredentials | None]:
    if pki is None:
        return [None] * count
    cluster = LocalCluster(pki)
    return [cluster.credentials(f"node-{index}", Role.NODE) for index in range(count)]


async def ours_worker(plan: Plan, pki: Path | None) -> dict[str, Any]:
    """Build the ring, run the workload, tear the ring down."""
    label = "tls" if pki else "plaintext"
    with trio.fail_after(plan.lifetime):
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            ring = await start_ring(nursery, node_credentials(pki, NODES))
            joined = trio.current_time() - started
            ring_seconds, fingers = await wait_for_ring(ring)
            links = await open_links(ring)
            progress(f"  {label}: {NODES} nodes joined in {joined:.1f} s, consistent {ring_seconds:.1f} s later, "
                     f"fingers {fingers:.0%} right; every link opened in {links:.1f} s")
            ops = ours_operations(ring[0], ring[NODES // 2])

            @contextlib.asynccontextmanager
            async def same_ring() -> AsyncIterator[Operations]:
                yield ops

            results = await run_workload(same_ring, plan, label, True, plan.ours_gc)
            nursery.cancel_scope.cancel()
    setup = {"joined_s": joined, "consistent_after_s": ring_seconds, "fingers_right": fingers, "links_opened_s": links}
    return {"system": label, "setup": setup, "ours_gc": plan.ours_gc, "sizes": results}


# -- kademlia: one asyncio process -------------------------------------------------------


async def gather_asyncio(calls: list[Callable[[], Awaitable[None]]]) -> None:
    await asyncio.gather(*(call() for call in calls))


async def start_kademlia(count: int, servers: list[Any]) -> None:
    """`count` servers on free loopback ports, into `servers` (so the caller can always
    stop them); each bootstraps from the first, then all again from the first and their
    neighbour in the list, so early ones learn of late ones."""
    from kademlia.network import Server  # optional extra, imported only when used

    for _ in range(count):
        server = Server()
        servers.append(server)
        await server.listen(0, interface="127.0.0.1")
    addresses = [server.transport.get_extra_info("sockname")[:2] for server in servers]
    for server in servers[1:]:
        await server.bootstrap([addresses[0]])
    for index, server in enumerate(servers):
        await server.bootstrap([addresses[0], addresses[(index + 1) % count]])


def known_peers(server: Any) -> int:
    return sum(len(bucket.get_nodes()) for bucket in server.protocol.router.buckets)


def counting_handler(counts: dict[str, int]) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler that counts, by type, what kademlia's own background
    tasks raise (late replies, hand-overs of values it cannot send) instead of logging it."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        name = type(error).__name__ if error is not None else str(context.get("message", "unknown"))[:60]
        counts[name] = counts.get(name, 0) + 1

    return handle


def kademlia_operations(putter: Any, getter: Any) -> Operations:
    from kademlia.utils import digest

    async def put(value: bytes) -> bytes:
        key = hashlib.sha256(value).digest()
        if not await asyncio.wait_for(putter.set(key, value), OP_TIMEOUT):
            raise OperationFailed("set: no server acknowledged a store")
        return key

    async def get(pair: tuple[bytes, bytes]) -> None:
        key, value = pair
        found = await asyncio.wait_for(getter.get(key), OP_TIMEOUT)
        if found != value:
            raise OperationFailed("get: not found" if found is None else "get: other bytes")

    def held_by_getter(keys: list[bytes]) -> set[bytes]:
        return {key for key in keys if getter.storage.get(digest(key)) is not None}

    return Operations(put, get, gather_asyncio, (Exception,), held_by_getter)


def fresh_kademlia(setups: list[dict[str, float]]) -> Phase:
    """A new set of servers for each phase (there are no links to keep), so that the UDP
    losses of one phase, and the re-announcements of every stored value to the peers it
    dropped and found again, do not carry over to the next."""

    @contextlib.asynccontextmanager
    async def phase() -> AsyncIterator[Operations]:
        servers: list[Any] = []
        started = time.perf_counter()
        try:
            await asyncio.wait_for(start_kademlia(NODES, servers), KADEMLIA_SETUP_TIMEOUT)
            setups.append({"bootstrapped_s": time.perf_counter() - started, "known_peers_median": median(known_peers(s) for s in servers)})
            yield kademlia_operations(servers[0], servers[NODES // 2])
        finally:
            for server in servers:
                server.stop()

    return phase


async def kademlia_worker(plan: Plan) -> dict[str, Any]:
    """Run the workload, each size and mode on servers of its own."""
    for name in ("kademlia", "rpcudp"):  # its failures are counted, not logged
        logging.getLogger(name).setLevel(logging.CRITICAL)
    background_errors: dict[str, int] = {}
    asyncio.get_running_loop().set_exception_handler(counting_handler(background_errors))
    setups: list[dict[str, float]] = []
    async with asyncio.timeout(plan.lifetime):
        results = await run_workload(fresh_kademlia(setups), plan, "kademlia", False)
    setup = {key: median(s[key] for s in setups) for key in ("bootstrapped_s", "known_peers_median")}
    progress(f"  kademlia: {NODES} servers bootstrapped in {setup['bootstrapped_s']:.1f} s for each phase, each knowing {setup['known_peers_median']:g} peers (median)")
    return {"system": "kademlia", "setup": setup, "version": kademlia_version(), "background_errors": background_errors, "sizes": results}


# -- worker processes --------------------------------------------------------------------


def worker_argv(system: str, options: "Options", pki: Path) -> list[str]:
    argv = [sys.executable, "-m", "tools.bench.bench_small", "--worker", system, "--values", str(options.values)]
    argv += ["--big-values", str(options.big_values), "--ours-gc", options.ours_gc, "--lifetime", f"{options.lifetime:g}"]
    return argv + (["--pki", str(pki)] if system == "tls" else [])


def run_worker(system: str, options: "Options", pki: Path) -> dict[str, Any]:
    """One system's round in a process of its own; its JSON result. Always stopped on the way out."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(worker_argv(system, options, pki), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=output)
        try:
            code = process.wait(options.lifetime + WORKER_GRACE)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the {system} worker did not finish within {options.lifetime + WORKER_GRACE:g} s") from None
        finally:
            stop(process, f"{system} worker")
        output.seek(0)
        text = output.read().decode(errors="replace")
    if code != 0:
        raise BenchError(f"the {system} worker exited with code {code}")
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except json.JSONDecodeError:
        raise BenchError(f"the {system} worker printed no result: {text[-300:]!r}") from None


def raise_open_file_limit() -> None:
    """32 nodes with a link between every two take about 2,000 descriptors: more than
    Debian's default soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(args: argparse.Namespace) -> int:
    plan = plan_of(args.values, args.big_values, args.ours_gc, args.lifetime)
    raise_open_file_limit()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.worker == "kademlia":
        work: Callable[[], dict[str, Any]] = lambda: asyncio.run(kademlia_worker(plan))  # noqa: E731
        errors: tuple[type[Exception], ...] = (Exception,)  # a third-party peer: anything it raises ends its part
    else:
        pki = Path(args.pki) if args.worker == "tls" else None
        work = lambda: trio.run(ours_worker, plan, pki)  # noqa: E731
        errors = (BenchError, ChordError, OSError, trio.TooSlowError)
    result, code = run_interruptibly(f"bench_small {args.worker} worker", work, errors, "nodes")
    if result is not None:
        print(json.dumps(result))
    return code


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rounds: int
    values: int
    big_values: int
    ours_gc: str
    lifetime: float


@dataclass
class Results:
    rounds: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # round -> system -> worker result
    kademlia_note: str | None = None


def plan_of(values: int, big_values: int, ours_gc: str, lifetime: float) -> Plan:
    sizes = tuple((size, values) for size in SMALL_SIZES) + ((BIG_SIZE, big_values),)
    return Plan(sizes, ours_gc, lifetime)


def rotated(systems: Sequence[str], by: int) -> list[str]:
    by %= len(systems)
    return [*systems[by:], *systems[:by]]


def run(options: Options) -> Results:
    results = Results()
    if kademlia_version() is None:
        results.kademlia_note = "the kademlia package is not installed (pip install kademlia, or the 'bench' extra)"
    with tempfile.TemporaryDirectory(prefix="bench-small-pki-") as directory:
        pki = Path(directory)
        cluster = LocalCluster(pki)
        for index in range(NODES):
            cluster.files(f"node-{index}", Role.NODE)
        for round_no in range(1, options.rounds + 1):
            results.rounds.append({})
            for system in rotated(SYSTEMS, round_no - 1):
                if system == "kademlia" and results.kademlia_note:
                    continue
                progress(f"round {round_no}: {LABELS[system]}")
                try:
                    results.rounds[-1][system] = run_worker(system, options, pki)
                except BenchError as exc:
                    if system != "kademlia":
                        raise
                    results.kademlia_note = f"kademlia failed in round {round_no}: {exc}"
    return results


# -- the report --------------------------------------------------------------------------


def figures_of(worker: dict[str, Any] | None, size: int, mode: str, op: str) -> dict[str, Any] | None:
    if worker is None:
        return None
    for entry in worker["sizes"]:
        if entry["size"] == size:
            return entry["modes"][mode][op]  # type: ignore[no-any-return]
    return None


def middle(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return median(present) if present else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Median across rounds of each figure; failures and copies held summed; the rounds themselves kept."""
    if not rounds:
        return None
    errors = [r["first_error"] for r in rounds if r["first_error"]]
    held = [r["getter_holds"] for r in rounds if "getter_holds" in r]
    summary = {
        "ops_per_s": median(r["ops_per_s"] for r in rounds),
        "p50_ms": middle([r["p50_ms"] for r in rounds]),
        "p99_ms": middle([r["p99_ms"] for r in rounds]),
        "cpu_us_per_op": middle([r["cpu_us_per_op"] for r in rounds]),
        "on_cpu_p50_ms": middle([r["on_cpu_p50_ms"] for r in rounds]),
        "on_cpu_p99_ms": middle([r["on_cpu_p99_ms"] for r in rounds]),
        "on_cpu_p99_without_gc_ms": middle([r["on_cpu_p99_without_gc_ms"] for r in rounds]),
        "failures": sum(r["failures"] for r in rounds),
        "not_attempted": sum(r["not_attempted"] for r in rounds),
        "not_stored": sum(r["not_stored"] for r in rounds),
        "operations": sum(r["ok"] + r["failures"] for r in rounds),
        "first_error": errors[0] if errors else None,
        "gc_pause_ms_total": median(r["gc"]["pause_ms_total"] for r in rounds),
        "gc_pause_ms_max": median(r["gc"]["pause_ms_max"] for r in rounds),
        "gc_gen2_collections": median(r["gc"]["collections"][2] for r in rounds),
        "rounds": rounds,
    }
    if held:
        summary["getter_holds"] = sum(held)
        summary["network_gets"] = sum(r["network_gets"] for r in rounds)
        for key in ("network_p50_ms", "network_p99_ms", "network_ops_per_s_one_at_a_time"):
            summary[key] = middle([r[key] for r in rounds])
    return summary


def paired_ratio(results: Results, system: str, other: str, size: int, mode: str, op: str) -> float | None:
    """Median over rounds of (system / other ops/s) in each round: both ran in it, back to back."""
    ratios = []
    for workers in results.rounds:
        ours, theirs = figures_of(workers.get(system), size, mode, op), figures_of(workers.get(other), size, mode, op)
        if ours is not None and theirs is not None and theirs["ok"]:
            ratios.append(ours["ops_per_s"] / theirs["ops_per_s"])
    return median(ratios) if ratios else None


def bars(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each bar with its figure: gets ≥ RATE_BAR × kademlia (where kademlia succeeded), get p99 ≤ P99_BAR_MS one in flight."""
    checks = []
    for entry in data["table"]:
        if entry["op"] != "get":
            continue
        ratio, kademlia = entry["ratios"]["tls_over_kademlia"], entry["systems"]["kademlia"]
        if ratio is not None:
            failed = kademlia["failures"] / kademlia["operations"]
            check = {"bar": f"get rate >= {RATE_BAR:g}x kademlia", "size": entry["size"], "in_flight": entry["in_flight"], "value": ratio}
            # where kademlia's own gets mostly failed, its rate is no yardstick
            check.update({"met": ratio >= RATE_BAR} if failed <= MAX_PEER_FAILURES else {"met": None, "kademlia_failed": failed})
            checks.append(check)
        tls = entry["systems"]["tls"]
        if entry["in_flight"] == 1 and tls is not None and tls["p99_ms"] is not None:
            checks.append({"bar": f"get p99 <= {P99_BAR_MS:g} ms", "size": entry["size"], "in_flight": 1, "value": tls["p99_ms"], "met": tls["p99_ms"] <= P99_BAR_MS})
    return checks


def report(results: Results, options: Options) -> dict[str, Any]:
    plan = plan_of(options.values, options.big_values, options.ours_gc, options.lifetime)
    table = []
    for size, count in plan.sizes:
        for mode, width in MODES.items():
            for op in OPERATIONS:
                systems = {s: summarize([f for w in results.rounds if (f := figures_of(w.get(s), size, mode, op)) is not None]) for s in SYSTEMS}
                ratios = {
                    "tls_over_kademlia": paired_ratio(results, "tls", "kademlia", size, mode, op),
                    "plaintext_over_kademlia": paired_ratio(results, "plaintext", "kademlia", size, mode, op),
                    "tls_over_plaintext": paired_ratio(results, "tls", "plaintext", size, mode, op),
                }
                table.append({"size": size, "values": count, "mode": mode, "in_flight": width, "op": op, "systems": systems, "ratios": ratios})
    data: dict[str, Any] = {
        "benchmark": f"put and get of single values, {NODES} nodes in one process per system, 127.0.0.1",
        "nodes": NODES,
        "replicas": {"ours": REPLICAS, "kademlia": 20},
        "rounds": options.rounds,
        "values_per_mode": dict(plan.sizes),
        "in_flight": dict(MODES),
        "ours_gc": options.ours_gc,
        "figures": "median across rounds; latencies in milliseconds; failures summed over rounds",
        "table": table,
        "setup": {s: [w[s]["setup"] for w in results.rounds if s in w] for s in SYSTEMS},
        "kademlia_note": results.kademlia_note,
        "kademlia_background_errors": background_errors(results),
        "environment": {
            "python": platform.python_version(),
            "trio": trio.__version__,
            "kademlia": kademlia_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
    }
    data["bars"] = bars(data)
    return data


def background_errors(results: Results) -> dict[str, int]:
    """What kademlia's own background tasks raised, by type, over all rounds."""
    counts: dict[str, int] = {}
    for workers in results.rounds:
        for name, count in workers.get("kademlia", {}).get("background_errors", {}).items():
            counts[name] = counts.get(name, 0) + count
    return counts


def cells(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return f"{'-':>8} {'-':>6} {'-':>6} {'-':>7}"
    failed = f"{summary['failures']}/{summary['operations']}" if summary["failures"] else "0"
    return f"{summary['ops_per_s']:>8,.0f} {ms(summary['p50_ms']):>6} {ms(summary['p99_ms']):>6} {failed:>7}"


def times(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def render(data: dict[str, Any]) -> list[str]:
    kademlia = " ".join(filter(None, ["kademlia", data["environment"]["kademlia"], "(UDP, asyncio, k=20)"]))
    per_mode = ", ".join(f"{count:,} of {describe_size(int(size))}" for size, count in data["values_per_mode"].items())
    gc_note = "" if data["ours_gc"] == "default" else f"; ours with the collector {'frozen' if data['ours_gc'] == 'freeze' else 'off'} after the warm-up"
    header = f"{'ops/s':>8} {'p50':>6} {'p99':>6} {'failed':>7}"
    lines = [
        f"put from node A, get from node B; {data['nodes']} nodes per system in one process on 127.0.0.1; "
        f"median of {data['rounds']} rounds{gc_note}",
        f"values per mode: {per_mode}; latencies in ms; ours r = {data['replicas']['ours']}, kademlia k = 20",
        "",
        f"{'':22} {LABELS['tls']:^30}   {LABELS['plaintext']:^30}   {kademlia:^30}   {'TLS/kad':>7} {'plain/kad':>9} {'TLS/plain':>9}",
        f"{'size':>10} {'flight':>6} {'op':>3}  {header}   {header}   {header}",
    ]
    for entry in data["table"]:
        s, r = entry["systems"], entry["ratios"]
        lines.append(
            f"{describe_size(entry['size']):>10} {entry['in_flight']:>6} {entry['op']:>3}  {cells(s['tls'])}   {cells(s['plaintext'])}   {cells(s['kademlia'])}   "
            f"{times(r['tls_over_kademlia']):>7} {times(r['plaintext_over_kademlia']):>9} {times(r['tls_over_plaintext']):>9}"
        )
    lines.append("x/kad and TLS/plain: median of per-round ratios of ops/s; failed: failures/operations over all rounds")
    lines += render_notes(data)
    return lines


def render_notes(data: dict[str, Any]) -> list[str]:
    lines = [""]
    for check in data["bars"]:
        value = f"{check['value']:.2f}x" if "rate" in check["bar"] else f"{check['value']:.2f} ms"
        verdict = {True: "met", False: "MISSED", None: f"not comparable: {check.get('kademlia_failed', 0):.0%} of kademlia's gets failed"}[check["met"]]
        lines.append(f"bar (mutual TLS) {check['bar']}, {describe_size(check['size'])}, {check['in_flight']} in flight: {value} {verdict}")
    lines.append("")
    for entry in data["table"]:
        for system in SYSTEMS:
            summary = entry["systems"][system]
            if summary is not None and summary["failures"]:
                skipped = "".join([
                    f"; {summary['not_stored']} not tried: their put had failed" if summary["not_stored"] else "",
                    f"; {summary['not_attempted']} not tried after {max(GIVE_UP_AFTER, 3 * entry['in_flight'])} failures in a row" if summary["not_attempted"] else "",
                ])
                first = f"; first error: {summary['first_error'][:160]}" if summary["first_error"] else ""
                lines.append(f"{LABELS[system]}, {describe_size(entry['size'])}, {entry['in_flight']} in flight, {entry['op']}: "
                             f"{summary['failures']} of {summary['operations']} failed{skipped}{first}")
    lines += render_kademlia_network(data) + render_cpu(data) + render_on_cpu(data) + render_gc(data) + render_setup(data)
    if data["kademlia_background_errors"]:
        lines.append(f"kademlia's background tasks raised (counted, not logged): {data['kademlia_background_errors']}")
    if data["kademlia_note"]:
        lines.append(f"kademlia not (fully) measured: {data['kademlia_note']}")
    return lines


def render_kademlia_network(data: dict[str, Any]) -> list[str]:
    """How many of kademlia's gets its getter answered from its own copy, and the figures of the rest."""
    entries = [e for e in data["table"] if e["op"] == "get" and e["systems"]["kademlia"] and "getter_holds" in e["systems"]["kademlia"]]
    held = sum(e["systems"]["kademlia"]["getter_holds"] for e in entries)
    got = sum(e["systems"]["kademlia"]["operations"] - e["systems"]["kademlia"]["failures"] for e in entries)
    if not got:
        return []
    lines = ["", f"kademlia's getter held a copy of {held / got:.0%} of the values it got (k = 20 of {data['nodes']} servers) and answered those "
             "with no network call; its gets that needed the network, one in flight:"]
    for entry in entries:
        k, tls = entry["systems"]["kademlia"], entry["systems"]["tls"]
        if entry["in_flight"] != 1 or not k["network_gets"]:
            continue
        versus = f"; ours with TLS {tls['ops_per_s'] / k['network_ops_per_s_one_at_a_time']:.2f}x that" if tls else ""
        lines.append(f"  {describe_size(entry['size']):>10}: {k['network_gets']} gets, p50 {ms(k['network_p50_ms'])} p99 {ms(k['network_p99_ms'])} ms, "
                     f"{k['network_ops_per_s_one_at_a_time']:,.0f}/s one at a time{versus}")
    return lines


def render_cpu(data: dict[str, Any]) -> list[str]:
    """CPU time per operation: steadier than wall time on a shared machine."""
    columns = [(system, op) for system in SYSTEMS for op in OPERATIONS]
    lines = ["", "CPU time per operation in microseconds (the whole process: the client side and all 32 nodes; median per round)",
             f"{'size':>10} {'flight':>6}  " + " ".join(f"{system[:5] + ' ' + op:>11}" for system, op in columns)]
    for size in map(int, data["values_per_mode"]):  # JSON keys are strings
        for mode, width in data["in_flight"].items():
            row = {e["op"]: e["systems"] for e in data["table"] if e["size"] == size and e["mode"] == mode}
            figures = [row[op][system]["cpu_us_per_op"] if row[op][system] else None for system, op in columns]
            lines.append(f"{describe_size(size):>10} {width:>6}  " + " ".join(f"{cpu:>11,.0f}" if cpu is not None else f"{'-':>11}" for cpu in figures))
    return lines


def render_on_cpu(data: dict[str, Any]) -> list[str]:
    """One in flight, each operation's CPU time: its latency without the other tenants of a shared machine."""
    lines = ["", "one in flight, CPU time of each operation (ms; the latency an otherwise idle machine would show): p50 / p99 / p99 less the collector's share"]
    for entry in data["table"]:
        if entry["in_flight"] != 1:
            continue
        parts = []
        for system in SYSTEMS:
            s = entry["systems"][system]
            if s is not None and s["on_cpu_p50_ms"] is not None:
                parts.append(f"{system} {s['on_cpu_p50_ms']:.2f} / {s['on_cpu_p99_ms']:.2f} / {s['on_cpu_p99_without_gc_ms']:.2f}")
        lines.append(f"  {describe_size(entry['size']):>10} {entry['op']}  " + ";  ".join(parts))
    return lines


def render_gc(data: dict[str, Any]) -> list[str]:
    lines = ["", "garbage collection during the gets (median per round): gen-2 collections / total pause / longest pause"]
    for entry in data["table"]:
        if entry["op"] != "get":
            continue
        parts = []
        for system in SYSTEMS:
            s = entry["systems"][system]
            if s is not None:
                parts.append(f"{system} {s['gc_gen2_collections']:g} / {s['gc_pause_ms_total']:.1f} ms / {s['gc_pause_ms_max']:.1f} ms")
        lines.append(f"  {describe_size(entry['size']):>10} x{entry['in_flight']:<2}  " + ";  ".join(parts))
    return lines


def render_setup(data: dict[str, Any]) -> list[str]:
    lines = []
    for setup in data["setup"]["tls"] + data["setup"]["plaintext"]:
        if setup["fingers_right"] < 1.0:
            lines.append(f"note: a ring started measuring with {setup['fingers_right']:.1%} of its fingers right (after {FINGER_TIMEOUT:g} s more)")
    return lines


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_small", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=integer(1, MAX_ROUNDS), default=3, help="rounds per system; the report takes the median")
    parser.add_argument("--values", type=integer(1, MAX_VALUES), default=1000, help="values per mode of 1,024 B and of 8,000 B")
    parser.add_argument("--big-values", type=integer(1, MAX_VALUES), default=200, help="values per mode of 100,000 B")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 100 and 20 values")
    parser.add_argument("--ours-gc", choices=GC_MODES, default="default", help="our collector after the warm-up (default: as a node runs)")
    parser.add_argument("--lifetime", type=positive(7200), default=900.0, metavar="S", help="seconds a worker may take for one round")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    if args.quick:
        args.rounds, args.values, args.big_values = 1, 100, 20
    options = Options(args.rounds, args.values, args.big_values, args.ours_gc, args.lifetime)
    results, code = run_interruptibly("bench_small", lambda: run(options), (BenchError, OSError), "workers")
    if results is None:
        return code
    data = report(results, options)
    print(json.dumps(data, indent=2) if args.json else "\n".join(render(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
