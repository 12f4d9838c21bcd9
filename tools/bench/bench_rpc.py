"""RPC round trips per second between two processes on loopback: ours with mutual
TLS, ours in plaintext, and kademlia.

What it measures: the "ping" RPC of a chordcdn node (msgpack frames over one pooled
TCP connection, trio, `dht.tcp`), once over mutual TLS (TLS 1.3, client
certificates, the cluster CA: how a ring runs) and once in plaintext (`--insecure`),
and the "ping" RPC of a kademlia `Server` from PyPI (msgpack datagrams over UDP,
asyncio, `rpcudp`), each answered by a separate server process on 127.0.0.1, each
called from this process through the library's own client side. Two modes per
system: one call at a time, and 32 calls in flight (32 tasks sharing one client,
so for ours one TCP connection).

How: the servers are `chordcdn node --listen 127.0.0.1:0` (one with a node
certificate from a throwaway CA, one --insecure) and this module run as
`--serve-kademlia`; each prints its address once ready and leaves on SIGTERM. Each
round opens a fresh client, warms it up, then runs each mode for --duration seconds,
recording every call's latency. The systems alternate round by round so that slow
spells of a shared machine hit all; the report gives, per system and mode, the
median across --rounds of calls/s, median latency and p99 latency (microseconds),
the ratio TLS/plaintext (bar: at least 0.7 at 32 in flight) and ours/kademlia.
Latency in the 32-in-flight mode includes queueing behind the other 31 calls.

    python -m tools.bench.bench_rpc [--duration 3] [--rounds 5] [--json]

kademlia is the optional extra "bench" (`pip install kademlia`); without it, or if
its server cannot run, the report says why and gives our figures alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import IO, Any, Awaitable, Callable, Iterator, Sequence

import trio

from dht.addresses import split_address
from dht.errors import ChordError
from dht.identity import Role
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials
from tools.argtypes import integer, positive
from tools.bench.common import run_interruptibly
from tools.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
MODES = {"serial": 1, "concurrent": 32}  # mode name -> calls in flight
SYSTEMS = ("tls", "plaintext", "kademlia")
TLS_BAR = 0.7  # TLS calls/s over plaintext at 32 in flight
CALL_TIMEOUT = 5.0  # seconds; rpcudp's own reply timeout is 5 s as well
WARMUP = 0.3  # seconds of calls per round before measuring
MAX_CALLS_PER_TASK = 10_000_000  # a count bound on every call loop, besides its deadline
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
MAX_DURATION, MAX_ROUNDS = 600.0, 100
NODE_READY = re.compile(r"node \S+ listening on (\S+)")
KADEMLIA_READY = re.compile(r"kademlia listening on (\S+)")

Call = Callable[[], Awaitable[None]]
Gather = Callable[[list[Call]], Awaitable[None]]


class PeerError(Exception):
    """A server process that would not start, or broke during the run."""


class KademliaCallFailed(Exception):
    """rpcudp gave up waiting for a reply."""


# -- one measurement ----------------------------------------------------------------


@dataclass
class Sample:
    """One mode of one round: successful calls, failed calls, wall time, latencies."""

    calls: int
    failures: int
    elapsed: float
    latencies_ns: list[int]

    def quantile_us(self, q: float) -> float:
        """Nearest-rank quantile of the latencies, in microseconds; needs at least one."""
        ordered = sorted(self.latencies_ns)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000

    def figures(self) -> dict[str, float]:
        """The round's figures as reported; latencies in microseconds."""
        return {
            "calls_per_s": self.calls / self.elapsed,
            "median_us": self.quantile_us(0.5),
            "p99_us": self.quantile_us(0.99),
            "calls": self.calls,
            "failures": self.failures,
            "seconds": self.elapsed,
        }


async def call_until(call: Call, failure: type[Exception], deadline_ns: int, latencies: list[int]) -> int:
    """Call back to back until the deadline; append each success's latency; return failures."""
    failures = 0
    for _ in range(MAX_CALLS_PER_TASK):
        start = time.perf_counter_ns()
        if start >= deadline_ns:
            break
        try:
            await call()
        except failure:
            failures += 1
            continue
        latencies.append(time.perf_counter_ns() - start)
    return failures


async def measure(call: Call, failure: type[Exception], width: int, seconds: float, gather: Gather) -> Sample:
    """Run `width` tasks calling back to back for `seconds`; framework-neutral but for `gather`."""
    latencies: list[int] = []
    failures: list[int] = []
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)

    async def task() -> None:
        failures.append(await call_until(call, failure, deadline, latencies))

    await gather([task] * width)
    return Sample(len(latencies), sum(failures), (time.perf_counter_ns() - start) / 1e9, latencies)


async def measure_modes(call: Call, failure: type[Exception], seconds: float, gather: Gather) -> dict[str, Sample]:
    """A warm-up, then each mode in turn; a mode in which no call succeeds is a broken server."""
    await measure(call, failure, max(MODES.values()), WARMUP, gather)
    samples: dict[str, Sample] = {}
    for mode, width in MODES.items():
        samples[mode] = await measure(call, failure, width, seconds, gather)
        if not samples[mode].calls:
            raise PeerError(f"no call succeeded with {width} in flight ({samples[mode].failures} failed)")
    return samples


# -- ours: trio, dht.tcp ---------------------------------------------------------------


async def gather_trio(calls: list[Call]) -> None:
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(call)


async def ours_round(address: str, seconds: float, tls: TlsCredentials | None) -> dict[str, Sample]:
    """One round against a chordcdn node, through a fresh call-only transport."""
    async with open_tcp_transport(None, tls=tls) as client:

        async def ping() -> None:
            await client.call(address, "ping", [], timeout=CALL_TIMEOUT)

        return await measure_modes(ping, ChordError, seconds, gather_trio)


# -- kademlia: asyncio, rpcudp -----------------------------------------------------------


async def gather_asyncio(calls: list[Call]) -> None:
    await asyncio.gather(*(call() for call in calls))


def ignore_late_replies(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """rpcudp sets results on the futures of calls an interrupt cancelled: no traceback for that."""
    if not isinstance(context.get("exception"), asyncio.InvalidStateError):
        loop.default_exception_handler(context)


async def kademlia_round(address: str, seconds: float) -> dict[str, Sample]:
    """One round against a kademlia server, from a fresh kademlia Server of our own."""
    from kademlia.network import Server  # optional extra, imported only when used

    host, port = split_address(address)
    asyncio.get_running_loop().set_exception_handler(ignore_late_replies)
    server = Server()
    await server.listen(0, interface="127.0.0.1")
    try:
        protocol, node_id = server.protocol, server.node.id

        async def ping() -> None:
            ok, _ = await protocol.ping((host, port), node_id)
            if not ok:
                raise KademliaCallFailed(f"no reply from {address}")

        return await measure_modes(ping, KademliaCallFailed, seconds, gather_asyncio)
    finally:
        server.stop()


async def serve_kademlia(lifetime: float) -> None:
    """The peer process: a kademlia Server on a free loopback port until SIGTERM."""
    from kademlia.network import Server

    server = Server()
    await server.listen(0, interface="127.0.0.1")
    try:
        host, port = server.transport.get_extra_info("sockname")[:2]
        print(f"kademlia listening on {host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime)
    finally:
        server.stop()


def kademlia_version() -> str | None:
    try:
        return metadata.version("kademlia")
    except metadata.PackageNotFoundError:
        return None


# -- server processes ---------------------------------------------------------------------


def chordcdn_argv(security: list[str]) -> list[str]:
    """A node with these credential flags (or --insecure)."""
    script = Path(sys.executable).parent / "chordcdn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tools.cli"]
    return [*command, "--log-level", "WARNING", "node", "--listen", "127.0.0.1:0", *security]


def kademlia_argv(lifetime: float) -> list[str]:
    """The peer exits by itself after `lifetime` seconds, should this process die without stopping it."""
    return [sys.executable, "-m", "tools.bench.bench_rpc", "--serve-kademlia", f"{lifetime:.0f}"]


def tail(stream: IO[bytes], limit: int = 2000) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-limit:].strip()


def await_ready(process: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float) -> str:
    """Read the process's stdout until `pattern` matches; return its first group."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        chunk = os.read(fd, 4096) if readable else b""
        if readable and not chunk:
            raise PeerError(f"exited with code {process.wait(STOP_TIMEOUT)} before it was ready")
        seen += chunk
        match = pattern.search(seen.decode(errors="replace"))
        if match:
            return match.group(1)
    raise PeerError(f"printed no ready line within {timeout:g} s")


def stop(process: subprocess.Popen[bytes], name: str) -> int:
    """SIGTERM, wait, kill if it lingers; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"{name} still running {STOP_TIMEOUT:g} s after SIGTERM: killing it", file=sys.stderr)
        process.kill()
        return process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def running(argv: Sequence[str], ready: re.Pattern[str], name: str, exits: dict[str, int]) -> Iterator[str]:
    """Run a server process; yield the address it prints; always stop it. Once it was
    ready, its exit code after SIGTERM goes into `exits`."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        address = None
        try:
            try:
                address = await_ready(process, ready, STARTUP_TIMEOUT)
            except PeerError as exc:
                raise PeerError(f"{name}: {exc}; its stderr: {tail(errors) or '(empty)'}") from None
            yield address
        finally:
            code = stop(process, name)
            if address is not None:
                exits[name] = code
            if process.stdout is not None:
                process.stdout.close()


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    """Every round's samples, by system then mode, and what went wrong on the way."""

    samples: dict[str, dict[str, list[Sample]]]
    kademlia_note: str | None = None  # why kademlia was not (fully) measured
    exits: dict[str, int] = field(default_factory=dict)  # server name -> exit code after SIGTERM


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def record(results: Results, system: str, round_no: int, samples: dict[str, Sample]) -> None:
    for mode, sample in samples.items():
        results.samples[system][mode].append(sample)
        fig = sample.figures()
        failed = f", {sample.failures} failed" if sample.failures else ""
        progress(
            f"round {round_no} {system:8} {MODES[mode]:>2} in flight: {fig['calls_per_s']:9,.0f} calls/s "
            f"median {fig['median_us']:7.0f} us  p99 {fig['p99_us']:7.0f} us{failed}"
        )


def start_kademlia(stack: contextlib.ExitStack, exits: dict[str, int], lifetime: float) -> tuple[str | None, str | None]:
    """Start the kademlia peer if possible: (address, None) or (None, why not)."""
    if kademlia_version() is None:
        return None, "the kademlia package is not installed (pip install kademlia, or the 'bench' extra)"
    try:
        return stack.enter_context(running(kademlia_argv(lifetime), KADEMLIA_READY, "kademlia peer", exits)), None
    except (PeerError, OSError) as exc:
        return None, f"the kademlia peer did not start: {exc}"


def run(seconds: float, rounds: int) -> Results:
    results = Results({system: {mode: [] for mode in MODES} for system in SYSTEMS})
    with contextlib.ExitStack() as stack:
        pki = LocalCluster(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rpc-pki-"))))
        secure = stack.enter_context(running(chordcdn_argv(pki.flags("node", Role.NODE)), NODE_READY, "chordcdn node (TLS)", results.exits))
        plain = stack.enter_context(running(chordcdn_argv(["--insecure"]), NODE_READY, "chordcdn node (plaintext)", results.exits))
        client_tls = pki.credentials("bench", Role.CLIENT)
        planned = rounds * len(SYSTEMS) * (WARMUP + len(MODES) * seconds)
        peer, results.kademlia_note = start_kademlia(stack, results.exits, 2 * planned + 120)
        progress(f"chordcdn nodes on {secure} (TLS) and {plain} (plaintext); kademlia peer on {peer or '(none)'}")
        for round_no in range(1, rounds + 1):
            record(results, "tls", round_no, trio.run(ours_round, secure, seconds, client_tls))
            record(results, "plaintext", round_no, trio.run(ours_round, plain, seconds, None))
            if peer is None:
                continue
            try:
                record(results, "kademlia", round_no, asyncio.run(kademlia_round(peer, seconds)))
            except Exception as exc:  # a third-party peer: any failure ends its part, ours goes on
                results.kademlia_note = f"kademlia failed in round {round_no}: {type(exc).__name__}: {exc}"
                peer = None
    return results


# -- the report ---------------------------------------------------------------------------------


def summarize(samples: list[Sample]) -> dict[str, Any] | None:
    """Median across rounds of each figure, with the rounds themselves."""
    if not samples:
        return None
    rounds = [sample.figures() for sample in samples]
    summary: dict[str, Any] = {key: median(r[key] for r in rounds) for key in ("calls_per_s", "median_us", "p99_us")}
    summary["failures"] = sum(r["failures"] for r in rounds)
    summary["rounds"] = rounds
    return summary


def ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> float | None:
    if ours is None or theirs is None or not theirs["calls_per_s"]:
        return None
    return float(ours["calls_per_s"] / theirs["calls_per_s"])


def paired_ratio(results: Results, system: str, other: str, mode: str) -> float | None:
    """Median over rounds of (system/other calls/s) within each round: the two ran
    back to back, so a slow spell of the machine hits both sides of each ratio."""
    pairs = zip(results.samples[system][mode], results.samples[other][mode])
    ratios = [a.calls / a.elapsed / (b.calls / b.elapsed) for a, b in pairs if b.calls]
    return median(ratios) if ratios else None


def report(results: Results, seconds: float, rounds: int) -> dict[str, Any]:
    systems = {system: {mode: summarize(results.samples[system][mode]) for mode in MODES} for system in SYSTEMS}
    return {
        "benchmark": "ping RPC round trips, client and server in separate processes on 127.0.0.1",
        "duration_s": seconds,
        "rounds": rounds,
        "in_flight": dict(MODES),
        "figures": "median across rounds; latencies in microseconds",
        "tls": systems["tls"],
        "plaintext": systems["plaintext"],
        "kademlia": systems["kademlia"],
        "ratio_tls_over_plaintext_calls_per_s": {mode: paired_ratio(results, "tls", "plaintext", mode) for mode in MODES},
        "tls_bar_at_32_in_flight": TLS_BAR,
        "ratio_ours_over_kademlia_calls_per_s": {
            system: {mode: ratio(systems[system][mode], systems["kademlia"][mode]) for mode in MODES} for system in ("tls", "plaintext")
        },
        "kademlia_note": results.kademlia_note,
        "server_exit_codes": results.exits,
        "environment": {
            "python": platform.python_version(),
            "trio": trio.__version__,
            "kademlia": kademlia_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
    }


def cells(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return f"{'-':>10} {'-':>10} {'-':>10}"
    return f"{summary['calls_per_s']:>10,.0f} {summary['median_us']:>10,.0f} {summary['p99_us']:>10,.0f}"


def times(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def render(data: dict[str, Any]) -> list[str]:
    kademlia = " ".join(filter(None, ["kademlia", data["environment"]["kademlia"], "(UDP, asyncio)"]))
    header = f"{'calls/s':>10} {'median us':>10} {'p99 us':>10}"
    lines = [
        f"ping RPC round trips on loopback, separate processes; median of {data['rounds']} rounds x {data['duration_s']:g} s",
        "",
        f"{'':9} {'chordcdn, mutual TLS':^32}   {'chordcdn, plaintext':^32}   {kademlia:^32}",
        f"{'in flight':9} {header}   {header}   {header}   {'TLS/plain':>9} {'TLS/kad':>8} {'plain/kad':>9}",
    ]
    for mode, width in data["in_flight"].items():
        versus = data["ratio_ours_over_kademlia_calls_per_s"]
        lines.append(
            f"{width:>9} {cells(data['tls'][mode])}   {cells(data['plaintext'][mode])}   {cells(data['kademlia'][mode])}   "
            f"{times(data['ratio_tls_over_plaintext_calls_per_s'][mode]):>9} {times(versus['tls'][mode]):>8} {times(versus['plaintext'][mode]):>9}"
        )
    concurrent = data["ratio_tls_over_plaintext_calls_per_s"]["concurrent"]
    met = concurrent is not None and concurrent >= data["tls_bar_at_32_in_flight"]
    lines.append(f"TLS/plain is the median of per-round ratios; bar at 32 in flight >= {data['tls_bar_at_32_in_flight']}: {'met' if met else 'NOT met'}")
    lines.append("x/kad is the ratio of calls/s: above 1, ours answers more calls per second.")
    for system in SYSTEMS:
        failed = sum(s["failures"] for s in data[system].values() if s is not None)
        if failed:
            lines.append(f"{system}: {failed} calls failed or timed out (not counted in calls/s)")
    if data["kademlia_note"]:
        lines.append(f"kademlia not measured: {data['kademlia_note']}")
    unclean = {name: code for name, code in data["server_exit_codes"].items() if code != 0}
    if unclean:
        lines.append(f"servers that did not exit cleanly after SIGTERM: {unclean}")
    return lines


# -- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_rpc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive(MAX_DURATION), default=3.0, metavar="S", help="seconds per mode per round")
    parser.add_argument("--rounds", type=integer(1, MAX_ROUNDS), default=5, help="rounds per system; the report takes the median")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    parser.add_argument("--serve-kademlia", type=float, metavar="LIFETIME", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_kademlia is not None:
        asyncio.run(serve_kademlia(args.serve_kademlia))
        return 0
    results, code = run_interruptibly("bench_rpc", lambda: run(args.duration, args.rounds), (PeerError,), "servers")
    if results is None:
        return code
    data = report(results, args.duration, args.rounds)
    print(json.dumps(data, indent=2) if args.json else "\n".join(render(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
