"""Put and get throughput of one large file through a ring of storing nodes on loopback.

What it measures: how fast a client stores a file in the ring (`DhtClient.put_file`:
cut into 256 KiB leaves plus inner DAG blocks, each block sent to its owner, which
writes it to disk and forwards it to its r−1 successors) and reads it back
(`DhtClient.read`: every block fetched from a replica and verified), in MB/s
(10^6 bytes per second; MiB/s beside it). The ring is --nodes separate `chordcdn
node` processes on 127.0.0.1 with r = --replicas, each with its own --data
directory in a temporary directory removed at the end. The client runs in this
process: `DhtClient.via` over `open_tcp_transport(None)` (trio), so each block's
owner is found by a `lookup` call to the first node, as `chordcdn put/get` do.

How: start the nodes (the first, then the others joining it), poll `chordcdn ring
--check` until it passes and every node's first r−1 successors are the true ones;
write --size-mib of random bytes to a file once; then each of --rounds puts that
file (timed from opening it to the CID) and gets it back (timed, into a sink that
keeps no bytes and counts them). Every get must return the file's length; after the
last round one more, untimed, read hashes what comes back and compares its SHA-256
with the source's. Each round puts a file of its own (all written before the first
round), so every put writes new blocks; --same-file re-puts one file instead, which
measures the cheaper path where every block is already stored.

For scale, the same run measures two links: raw loopback TCP (one stream of 1 MiB
`sendall`s from this process to a sink process, the bytes counted by the sink) and
our own transport (`ping` calls carrying a 256 KiB payload to the first node, as
many in flight as the client's window), and reports put and get as fractions of
them. After the last round it sums the node data directories, against r × the
file size, to show that r copies were made, and their spread over the nodes.

    python -m tools.bench.bench_store [--size-mib 256] [--nodes 8] [--replicas 3] [--rounds 3] [--same-file] [--json]

Bars (from the issue): get ≥ 150 MB/s and put ≥ 60 MB/s, on the medians. A put or
get that takes longer than --transfer-timeout seconds aborts the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import IO, Any, Callable, Iterator, Sequence

import trio

from dht.client import DhtClient
from dht.errors import ChordError
from dht.merkle import DEFAULT_CHUNK
from dht.addresses import split_address
from dht.tcp import TcpTransport, open_tcp_transport
from tools.bench.bench_rpc import PeerError, await_ready, progress, tail
from tools.argtypes import integer, positive
from tools.bench.common import run_interruptibly

ROOT = Path(__file__).resolve().parents[2]
MB, MIB = 1_000_000, 1 << 20
BARS = {"put": 60.0, "get": 150.0}  # MB/s, on the median across rounds
NODE_READY = re.compile(r"node \S+ listening on ([^\s,]+)")
SINK_READY = re.compile(r"sink listening on (\S+)")
STARTUP_TIMEOUT = 30.0  # seconds for one process to print its ready line
RING_TIMEOUT = 90.0  # seconds for the ring to check clean
RING_CALL_TIMEOUT = 20.0  # seconds for one `chordcdn ring` run
STOP_TIMEOUT = 75.0  # seconds after SIGTERM, for all nodes together, before kill: a node's leave may take 60
LINK_WRITE = MIB
PING_PAYLOAD = 256 * 1024
CALL_TIMEOUT = 10.0
MAX_LINK_WRITES = 1_000_000  # a count bound on the link loop, besides its deadline
MAX_SIZE_MIB, MAX_NODES, MAX_ROUNDS = 16_384, 64, 100


class BenchError(Exception):
    """A run that cannot go on: a node or transfer failed, or a check did not pass."""


@dataclass(frozen=True)
class Options:
    size: int
    nodes: int
    replicas: int
    rounds: int
    window: int
    stabilize_interval: float
    link_seconds: float
    transfer_timeout: float
    fresh: bool


# -- node processes ----------------------------------------------------------------------


@dataclass
class Node:
    """One `chordcdn node` process, its data directory and its captured stderr."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    errors: IO[bytes]
    address: str = ""


def chordcdn_command() -> list[str]:
    script = Path(sys.executable).parent / "chordcdn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tools.cli"]
    return [*command, "--log-level", "WARNING"]


def node_argv(data_dir: Path, options: Options, join: str | None) -> list[str]:
    argv = [*chordcdn_command(), "node", "--listen", "127.0.0.1:0", "--data", str(data_dir), "--replicas", str(options.replicas)]
    argv += ["--stabilize-interval", f"{options.stabilize_interval:g}"]
    return argv + (["--join", join] if join else [])


def spawn(data_dir: Path, options: Options, join: str | None, stack: contextlib.ExitStack) -> Node:
    data_dir.mkdir()
    errors = stack.enter_context(tempfile.TemporaryFile())
    argv = node_argv(data_dir, options, join)
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
    return Node(process, data_dir, errors)


def wait_ready(node: Node, name: str) -> None:
    try:
        node.address = await_ready(node.process, NODE_READY, STARTUP_TIMEOUT)
    except PeerError as exc:
        raise PeerError(f"{name}: {exc}; its stderr: {tail(node.errors) or '(empty)'}") from None


def start_ring(base: Path, options: Options, nodes: list[Node], stack: contextlib.ExitStack) -> str:
    """Start the first node, then the others joining it (all at once); return the first's address.
    Each node goes into `nodes` as soon as it is spawned, so the caller can always stop it."""
    nodes.append(spawn(base / "node-0", options, None, stack))
    wait_ready(nodes[0], "node 0")
    first = nodes[0].address
    for index in range(1, options.nodes):
        nodes.append(spawn(base / f"node-{index}", options, first, stack))
    for index, node in enumerate(nodes[1:], start=1):
        wait_ready(node, f"node {index}")
    return first


def stop_all(nodes: list[Node]) -> dict[str, Any]:
    """SIGTERM every node at once, wait for all (kill any left at the deadline); exit codes and time."""
    started = time.monotonic()
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    deadline = started + STOP_TIMEOUT
    codes: dict[str, int] = {}
    killed: list[str] = []
    for index, node in enumerate(nodes):
        name = node.address or f"node {index}"
        try:
            codes[name] = node.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            codes[name] = node.process.wait(STOP_TIMEOUT)
            killed.append(name)
        if node.process.stdout is not None:
            node.process.stdout.close()
    return {"exit_codes": codes, "killed_after_timeout": killed, "seconds": time.monotonic() - started}


# -- waiting for the ring ------------------------------------------------------------------------


def ring_argv(via: str) -> list[str]:
    return [*chordcdn_command(), "ring", "--via", via, "--check", "--json"]


def ring_is_ready(view: dict[str, Any], count: int, replicas: int) -> bool:
    """All `count` nodes found, and each one's first r−1 successors the next ones by ID."""
    nodes = sorted(view["nodes"], key=lambda node: int(node["id"], 16))
    if len(nodes) != count:
        return False
    wanted = min(replicas - 1, count - 1)
    for index, node in enumerate(nodes):
        expected = [nodes[(index + step) % count]["id"] for step in range(1, wanted + 1)]
        if [successor["id"] for successor in node["successors"][:wanted]] != expected:
            return False
    return True


def wait_for_ring(via: str, options: Options) -> float:
    """Poll `chordcdn ring --check` until it passes with every node's replica set right; seconds waited."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < RING_TIMEOUT:
        try:
            done = subprocess.run(ring_argv(via), cwd=ROOT, capture_output=True, timeout=RING_CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            last = f"`chordcdn ring` took over {RING_CALL_TIMEOUT:g} s"
            continue
        if done.returncode == 0 and ring_is_ready(json.loads(done.stdout), options.nodes, options.replicas):
            return time.monotonic() - started
        last = (done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}")[-500:]
        time.sleep(0.5)
    raise BenchError(f"the ring did not check clean within {RING_TIMEOUT:g} s; last: {last}")


# -- the file -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    sha256: str


def make_source(directory: Path, size: int, number: int) -> Source:
    """Random bytes written once, hashed as they are written."""
    path = directory / f"source-{number}.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for offset in range(0, size, 8 * MIB):
            chunk = os.urandom(min(8 * MIB, size - offset))
            digest.update(chunk)
            file.write(chunk)
    return Source(path, size, digest.hexdigest())


# -- the link, for scale ---------------------------------------------------------------------------


def serve_sink(lifetime: float) -> None:
    """The sink process: accept one connection, count its bytes to EOF, answer the count."""
    deadline = time.monotonic() + lifetime
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(lifetime)
        print(f"sink listening on 127.0.0.1:{server.getsockname()[1]}", flush=True)
        connection, _ = server.accept()
        with connection:
            connection.settimeout(lifetime)
            buffer = bytearray(LINK_WRITE)
            total = 0
            while time.monotonic() < deadline and (received := connection.recv_into(buffer)):
                total += received
            connection.sendall(struct.pack(">Q", total))


def receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise BenchError("the link sink closed before answering")
        data += chunk
    return data


def measure_link(seconds: float) -> dict[str, float]:
    """One TCP stream of 1 MiB writes to a sink process for `seconds`; MB/s as counted by the sink."""
    lifetime = seconds + 30
    argv = [sys.executable, "-m", "tools.bench.bench_store", "--serve-sink", f"{lifetime:g}"]
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        host, port = split_address(await_ready(process, SINK_READY, STARTUP_TIMEOUT))
        payload = os.urandom(LINK_WRITE)
        with socket.create_connection((host, port), timeout=lifetime) as sock:
            start = time.perf_counter()
            for _ in range(MAX_LINK_WRITES):
                if time.perf_counter() - start >= seconds:
                    break
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            (total,) = struct.unpack(">Q", receive_exactly(sock, 8))
            elapsed = time.perf_counter() - start
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
    return {"mb_per_s": total / elapsed / MB, "bytes": total, "seconds": elapsed}


async def measure_transport(transport: TcpTransport, address: str, width: int, seconds: float) -> dict[str, float]:
    """`ping` calls each carrying PING_PAYLOAD bytes, `width` in flight, for `seconds`; payload MB/s."""
    payload = os.urandom(PING_PAYLOAD)
    calls = 0
    start = trio.current_time()

    async def caller() -> None:
        nonlocal calls
        while trio.current_time() - start < seconds:
            await transport.call(address, "ping", [payload], timeout=CALL_TIMEOUT)
            calls += 1

    async with trio.open_nursery() as nursery:
        for _ in range(width):
            nursery.start_soon(caller)
    elapsed = trio.current_time() - start
    return {"mb_per_s": calls * PING_PAYLOAD / elapsed / MB, "calls": calls, "in_flight": width, "seconds": elapsed}


# -- the transfers --------------------------------------------------------------------------------------


@dataclass
class Round:
    put_seconds: float
    get_seconds: float
    size: int
    cid: str

    def figures(self) -> dict[str, float | str]:
        return {
            "put_mb_per_s": self.size / self.put_seconds / MB,
            "get_mb_per_s": self.size / self.get_seconds / MB,
            "put_seconds": self.put_seconds,
            "get_seconds": self.get_seconds,
            "cid": self.cid,
        }


@contextlib.contextmanager
def bounded(what: str, seconds: float) -> Iterator[None]:
    """Fail with a clear message rather than hang, or pass on a ring error as a BenchError."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise BenchError(f"{what} did not finish within {seconds:g} s; aborting") from None
    except ChordError as exc:
        raise BenchError(f"{what} failed: {type(exc).__name__}: {exc}") from None


async def timed_put(client: DhtClient, source: Source, bound: float) -> tuple[str, float]:
    start = time.perf_counter()
    with bounded(f"put of {source.size:,} bytes", bound), open(source.path, "rb") as file:
        cid = await client.put_file(file, DEFAULT_CHUNK)
    return cid, time.perf_counter() - start


async def read_counted(
    client: DhtClient, cid: str, source: Source, bound: float, feed: Callable[[bytes], object] | None = None
) -> None:
    """Read the file into a sink that counts the bytes (and passes them to `feed`, if given)."""
    count = 0

    async def sink(data: bytes) -> None:
        nonlocal count
        count += len(data)
        if feed is not None:
            feed(data)

    with bounded(f"get of {source.size:,} bytes", bound):
        returned = await client.read(cid, sink)
    if count != source.size or returned != source.size:
        raise BenchError(f"get returned {count:,} bytes (read said {returned:,}), the file has {source.size:,}")


async def timed_get(client: DhtClient, cid: str, source: Source, bound: float) -> float:
    start = time.perf_counter()
    await read_counted(client, cid, source, bound)
    return time.perf_counter() - start


async def verify(client: DhtClient, cid: str, source: Source, bound: float) -> str:
    """An untimed read whose SHA-256 must be the source's; return it."""
    digest = hashlib.sha256()
    await read_counted(client, cid, source, bound, digest.update)
    if digest.hexdigest() != source.sha256:
        raise BenchError(f"the bytes read back from {cid} do not match the source's SHA-256")
    return digest.hexdigest()


@dataclass
class Transfers:
    rounds: list[Round] = field(default_factory=list)
    verified_sha256: str = ""
    transport: dict[str, float] = field(default_factory=dict)
    client_stats: dict[str, int] = field(default_factory=dict)


async def run_round(client: DhtClient, number: int, source: Source, expected_cid: str | None, bound: float) -> Round:
    """Put the file, then get it; a file put before must get the same CID again."""
    cid, put_seconds = await timed_put(client, source, bound)
    if expected_cid is not None and cid != expected_cid:
        raise BenchError(f"round {number} put gave CID {cid}, an earlier put of the same file gave {expected_cid}")
    get_seconds = await timed_get(client, cid, source, bound)
    done = Round(put_seconds, get_seconds, source.size, cid)
    fig = done.figures()
    progress(f"round {number}: put {fig['put_mb_per_s']:6.1f} MB/s  get {fig['get_mb_per_s']:6.1f} MB/s")
    return done


async def run_transfers(via: str, sources: list[Source], options: Options) -> Transfers:
    """The transport figure, every round's put and get, then the verifying read, through one client transport."""
    results = Transfers()
    async with open_tcp_transport(None) as transport:
        with bounded("the transport measurement", options.link_seconds + 60):
            results.transport = await measure_transport(transport, via, options.window, options.link_seconds)
        progress(f"our transport: {results.transport['mb_per_s']:.0f} MB/s of 256 KiB ping payloads")
        client = await DhtClient.via(transport, via, window=options.window)
        for index in range(options.rounds):
            earlier = results.rounds[index - len(sources)].cid if index >= len(sources) else None
            source = sources[index % len(sources)]
            results.rounds.append(await run_round(client, index + 1, source, earlier, options.transfer_timeout))
        results.verified_sha256 = await verify(client, results.rounds[0].cid, sources[0], options.transfer_timeout)
        results.client_stats = asdict(client.stats)
    return results


# -- where the bytes went -------------------------------------------------------------------------------


def directory_usage(directory: Path) -> dict[str, Any]:
    """All bytes under directory, and the block segment files among them."""
    total = value_bytes = value_files = 0
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        total += size
        if path.suffix == ".blocks":
            value_bytes += size
            value_files += 1
    return {"bytes": total, "value_files": value_files, "value_bytes": value_bytes}


def spread(nodes: list[Node], stored: int, replicas: int) -> dict[str, Any]:
    """Bytes in each node's data directory against r x the `stored` bytes of distinct files put."""
    per_node = {node.address: directory_usage(node.data_dir) for node in nodes}
    total = sum(usage["bytes"] for usage in per_node.values())
    values = sum(usage["value_bytes"] for usage in per_node.values())
    return {
        "per_node": per_node,
        "stored_bytes": stored,
        "expected_bytes": replicas * stored,
        "total_bytes": total,
        "total_value_bytes": values,
        "total_value_files": sum(usage["value_files"] for usage in per_node.values()),
        "copies_by_total": total / stored,
        "copies_by_value_files": values / stored,
        "leaves_put": -(-stored // DEFAULT_CHUNK),
    }


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Results:
    ring_seconds: float = 0.0
    link: dict[str, float] = field(default_factory=dict)
    transfers: Transfers = field(default_factory=Transfers)
    spread: dict[str, Any] = field(default_factory=dict)
    shutdown: dict[str, Any] = field(default_factory=dict)


def run(options: Options) -> Results:
    results = Results()
    nodes: list[Node] = []
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_store-")))
        try:
            first = start_ring(base, options, nodes, stack)
            results.ring_seconds = wait_for_ring(first, options)
            progress(f"{options.nodes} nodes, ring ready after {results.ring_seconds:.1f} s; first on {first}")
            sources = [make_source(base, options.size, n) for n in range(options.rounds if options.fresh else 1)]
            results.link = measure_link(options.link_seconds)
            progress(f"raw TCP loopback: {results.link['mb_per_s']:.0f} MB/s")
            results.transfers = trio.run(run_transfers, first, sources, options)
            results.spread = spread(nodes, options.size * len(sources), options.replicas)
        finally:
            results.shutdown = stop_all(nodes)
    return results


# -- the report ---------------------------------------------------------------------------------------------


def summarize(values: list[float], bar: float) -> dict[str, Any]:
    middle = median(values)
    return {"median_mb_per_s": middle, "median_mib_per_s": middle * MB / MIB, "bar_mb_per_s": bar, "met": middle >= bar}


def report(results: Results, options: Options) -> dict[str, Any]:
    rounds = [r.figures() for r in results.transfers.rounds]
    put = summarize([float(r["put_mb_per_s"]) for r in rounds], BARS["put"])
    get = summarize([float(r["get_mb_per_s"]) for r in rounds], BARS["get"])
    links = {"raw_tcp": results.link["mb_per_s"], "our_transport": results.transfers.transport["mb_per_s"]}
    return {
        "benchmark": "put and get of one file through a ring of chordcdn node processes on 127.0.0.1",
        "size_bytes": options.size,
        "nodes": options.nodes,
        "replicas": options.replicas,
        "window": options.window,
        "chunk_bytes": DEFAULT_CHUNK,
        "fresh_file_each_round": options.fresh,
        "verified_sha256": results.transfers.verified_sha256,
        "rounds": rounds,
        "put": put,
        "get": get,
        "first_round_put_mb_per_s": rounds[0]["put_mb_per_s"],
        "link": {"raw_tcp": results.link, "our_transport": results.transfers.transport},
        "ratios": {
            f"{kind}_over_{link}": summary["median_mb_per_s"] / speed
            for kind, summary in (("put", put), ("get", get))
            for link, speed in links.items()
        },
        "spread": results.spread,
        "client_stats": results.transfers.client_stats,
        "ring_ready_seconds": results.ring_seconds,
        "shutdown": results.shutdown,
        "environment": {
            "python": platform.python_version(),
            "trio": trio.__version__,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
    }


def rate(mb_per_s: float) -> str:
    return f"{mb_per_s:7.1f} MB/s ({mb_per_s * MB / MIB:6.1f} MiB/s)"


def verdict(summary: dict[str, Any]) -> str:
    return f"bar ≥ {summary['bar_mb_per_s']:g} MB/s {'met' if summary['met'] else 'MISSED'}"


def render(data: dict[str, Any]) -> list[str]:
    lines = [
        f"put and get of a {data['size_bytes'] / MIB:g} MiB file through {data['nodes']} chordcdn node processes "
        f"on 127.0.0.1, r = {data['replicas']}, {data['window']} blocks in flight",
        "",
        f"{'round':>6}  {'put':^30} {'s':>6}   {'get':^30} {'s':>6}",
    ]
    for number, r in enumerate(data["rounds"], start=1):
        note = "" if number == 1 or data["fresh_file_each_round"] else "  (re-put: blocks already stored)"
        lines.append(
            f"{number:>6}  {rate(r['put_mb_per_s'])} {r['put_seconds']:6.2f}   {rate(r['get_mb_per_s'])} {r['get_seconds']:6.2f}{note}"
        )
    put, get = data["put"], data["get"]
    lines += [
        f"{'median':>6}  {rate(put['median_mb_per_s'])} {'':6}   {rate(get['median_mb_per_s'])}",
        f"put {verdict(put)}; get {verdict(get)}",
        *fresh_note(data),
        f"the first round's file read back once more, untimed: SHA-256 {data['verified_sha256'][:16]}… matches the source",
        "",
    ]
    raw, ours = data["link"]["raw_tcp"], data["link"]["our_transport"]
    ratios = data["ratios"]
    lines += [
        f"raw TCP loopback, one stream, 1 MiB writes, process to process: {rate(raw['mb_per_s'])}",
        f"our transport, ping with 256 KiB payloads, {ours['in_flight']} in flight:   {rate(ours['mb_per_s'])}",
        f"median put = {ratios['put_over_raw_tcp']:.1%} of raw TCP, {ratios['put_over_our_transport']:.1%} of our transport; "
        f"get = {ratios['get_over_raw_tcp']:.1%} of raw TCP, {ratios['get_over_our_transport']:.1%} of our transport",
        "",
    ]
    lines += render_spread(data["spread"], data["replicas"])
    stats = {key: value for key, value in data["client_stats"].items() if value}
    if stats:
        lines.append(f"client: {stats}")
    shutdown = data["shutdown"]
    unclean = {name: code for name, code in shutdown["exit_codes"].items() if code != 0}
    lines.append(
        f"nodes stopped in {shutdown['seconds']:.1f} s after SIGTERM"
        + (f"; not cleanly: {unclean}" if unclean else "; all exited 0")
    )
    return lines


def fresh_note(data: dict[str, Any]) -> list[str]:
    """With --same-file only round 1 stores new blocks: say how that put fares against the bar."""
    if data["fresh_file_each_round"] or len(data["rounds"]) < 2:
        return []
    first, bar = data["first_round_put_mb_per_s"], data["put"]["bar_mb_per_s"]
    return [
        f"note: only round 1's put wrote new blocks ({first:.1f} MB/s, put bar "
        f"{'met' if first >= bar else 'MISSED'}); rounds 2+ re-put blocks already stored (drop --same-file to avoid that)"
    ]


def render_spread(data: dict[str, Any], replicas: int) -> list[str]:
    stored = data["stored_bytes"]
    lines = [
        f"data directories after the last round: {replicas} x {stored / MIB:,.1f} MiB put = "
        f"{data['expected_bytes'] / MIB:,.1f} MiB expected",
        f"  {'node':>21}  {'all files':>12}  {'segment files':>26}",
    ]
    for address, usage in data["per_node"].items():
        lines.append(
            f"  {address:>21}  {usage['bytes'] / MIB:8.1f} MiB  {usage['value_files']:8} {usage['value_bytes'] / MIB:11.1f} MiB"
        )
    lines += [
        f"  {'total':>21}  {data['total_bytes'] / MIB:8.1f} MiB  {data['total_value_files']:8} {data['total_value_bytes'] / MIB:11.1f} MiB",
        f"  copies of the data: {data['copies_by_value_files']:.3f} counting segment bytes "
        f"(41-byte record headers and inner blocks included); {data['leaves_put']} leaves were put",
    ]
    return lines


# -- command line ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=integer(1, MAX_SIZE_MIB), default=256, metavar="MIB")
    parser.add_argument("--nodes", type=integer(1, MAX_NODES), default=8)
    parser.add_argument("--replicas", type=integer(1, MAX_NODES), default=3, metavar="R")
    parser.add_argument("--rounds", type=integer(1, MAX_ROUNDS), default=3, help="put+get rounds; the report takes the median")
    parser.add_argument("--window", type=integer(1, 1024), default=16, help="blocks in flight (DhtClient window)")
    parser.add_argument("--stabilize-interval", type=positive(3600), default=0.5, metavar="S")
    parser.add_argument("--link-seconds", type=positive(3600), default=2.0, metavar="S", help="per link measurement")
    parser.add_argument("--transfer-timeout", type=positive(3600), default=600.0, metavar="S", help="abort a put or get after this")
    parser.add_argument("--same-file", action="store_true", help="re-put one file each round (blocks already stored)")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    parser.add_argument("--serve-sink", type=float, metavar="LIFETIME", help=argparse.SUPPRESS)
    return parser


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        size=args.size_mib * MIB,
        nodes=args.nodes,
        replicas=args.replicas,
        rounds=args.rounds,
        window=args.window,
        stabilize_interval=args.stabilize_interval,
        link_seconds=args.link_seconds,
        transfer_timeout=args.transfer_timeout,
        fresh=not args.same_file,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_sink is not None:
        serve_sink(args.serve_sink)
        return 0
    if args.replicas > args.nodes:
        parser.error(f"--replicas {args.replicas} needs at least as many --nodes")
    options = options_from(args)
    errors = (PeerError, BenchError, ChordError, OSError)
    results, code = run_interruptibly("bench_store", lambda: run(options), errors, "nodes")
    if results is None:
        return code
    data = report(results, options)
    print(json.dumps(data, indent=2) if args.json else "\n".join(render(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
