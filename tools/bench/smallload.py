"""The framework-neutral half of bench_small: what a run asks for (Options, the Plan each
worker runs), the errors, and the measuring itself (running puts and gets one or 32 at a
time under trio or asyncio alike, latencies, CPU time, collector pauses), shared by the
worker processes and the report."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncContextManager, Awaitable, Callable, Iterator

from tools.bench.bench_rpc import progress

NODES = 32
REPLICAS = 3
SMALL_SIZES = (1024, 8000)  # --values of each
BIG_SIZE = 100_000  # --big-values of it
MODES = {"serial": 1, "concurrent": 32}  # mode name -> operations in flight
OPERATIONS = ("put", "get")
GIVE_UP_AFTER = 25  # failures in a row that end a mode (at least 3 x the operations in flight)
WARMUP_VALUES = 128
FINGER_TIMEOUT = 30.0  # further seconds for the fingers; the run goes on without them


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


@dataclass(frozen=True)
class Options:
    rounds: int
    values: int
    big_values: int
    ours_gc: str
    lifetime: float


def plan_of(values: int, big_values: int, ours_gc: str, lifetime: float) -> Plan:
    sizes = tuple((size, values) for size in SMALL_SIZES) + ((BIG_SIZE, big_values),)
    return Plan(sizes, ours_gc, lifetime)


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
