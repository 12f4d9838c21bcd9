"""Put and get throughput of one large file through a ring of storing nodes on
loopback, with mutual TLS and in plaintext in the same run.

What it measures: how fast a client stores a file in the ring (`DhtClient.put_file`:
cut into 256 KiB leaves plus inner DAG blocks, each block sent by the client to
every node of its replica set, which verifies it and writes it to disk) and reads
it back (`DhtClient.read`: every block fetched from a replica and verified), in MB/s
(10^6 bytes per second; MiB/s beside it). Two rings run side by side, each of
--nodes separate `chordcdn node` processes on 127.0.0.1 with r = --replicas and
their own --data directories in a temporary directory removed at the end: one with
node certificates from a throwaway cluster CA (every link mutual TLS, as a ring
runs), one --insecure. The client runs in this process: `DhtClient.via` over
`open_tcp_transport(None)` (trio), with a client certificate for the TLS ring, so
it finds each block's replica set by a lookup of its own, as `chordcdn put/get` do.

How: start the nodes (the first, then the others joining it), poll `chordcdn ring
--check` until it passes and every node's first r−1 successors are the true ones;
write --size-mib of random bytes to a file once; then each of --rounds puts that
file (timed from opening it to the CID) and gets it back (timed, into a sink that
keeps no bytes and counts them), first through the TLS ring, then through the
plaintext one, so that slow spells of a shared machine hit both. Every get must
return the file's length; after the last round one more, untimed, read per ring
hashes what comes back and compares its SHA-256 with the source's. Each round puts
a file of its own (all written before the first round), so every put writes new
blocks; --same-file re-puts one file instead, which measures the cheaper path where
every block is already stored.

For scale, the same run measures two links: raw loopback TCP (one stream of 1 MiB
`sendall`s from this process to a sink process, the bytes counted by the sink) and
our own transport (`ping` calls carrying a 256 KiB payload to the first node, as
many in flight as the client's window, per ring), and reports put and get as
fractions of them. After the last round it sums the node data directories, against
r × the file size, to show that r copies were made, and their spread over the nodes.

    python -m tools.bench.bench_store [--size-mib 256] [--nodes 8] [--replicas 3] [--rounds 3] [--same-file] [--json]

Bars (from the issue), with mutual TLS: put ≥ 100 MB/s and get ≥ 250 MB/s, on the
medians; the report gives each as a ratio to plaintext (the median of per-round
ratios). A put or get that takes longer than --transfer-timeout seconds aborts the run.
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

from dht.addresses import MAX_VNODES, split_address
from dht.client import DhtClient
from dht.errors import ChordError
from dht.identity import Role
from dht.merkle import DEFAULT_CHUNK
from dht.routing import NodeRef, distinct_hosts, merge_successor_list
from dht.tcp import TcpTransport, open_tcp_transport
from tools.argtypes import integer, positive
from tools.bench.bench_rpc import PeerError, await_ready, progress, tail
from tools.bench.common import run_interruptibly
from tools.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
MB, MIB = 1_000_000, 1 << 20
BARS = {"put": 100.0, "get": 250.0}  # MB/s with mutual TLS, on the median across rounds
MODES = ("tls", "plaintext")
NODE_READY = re.compile(r"node \S+ listening on ([^\s,]+)")
SINK_READY = re.compile(r"sink listening on (\S+)")
STARTUP_TIMEOUT = 30.0  # seconds for one process to print its ready line
RING_TIMEOUT = 90.0  # seconds for the ring to check clean
SUCCESSORS = 8  # successor list length of `chordcdn node` (its default)
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
    vnodes: int = 1


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


def node_argv(data_dir: Path, options: Options, join: str | None, security: list[str]) -> list[str]:
    argv = [*chordcdn_command(), "node", "--listen", "127.0.0.1:0", "--data", str(data_dir), "--replicas", str(options.replicas)]
    argv += ["--stabilize-interval", f"{options.stabilize_interval:g}", "--vnodes", str(options.vnodes), *security]
    return argv + (["--join", join] if join else [])


@dataclass
class Ring:
    """One ring of node processes: TLS ("tls", with its PKI) or "plaintext"."""

    mode: str
    pki: LocalCluster | None
    nodes: list[Node] = field(default_factory=list)
    first: str = ""

    def security(self, name: str) -> list[str]:
        return self.pki.flags(name, Role.NODE) if self.pki else ["--insecure"]

    def client_env(self) -> dict[str, str]:
        if self.pki is None:
            return {**os.environ}
        files = self.pki.files("bench-client", Role.CLIENT)
        return {**os.environ, "CHORDCDN_CERT": str(files.cert), "CHORDCDN_KEY": str(files.key), "CHORDCDN_CA": str(files.ca)}


def spawn(data_dir: Path, options: Options, join: str | None, security: list[str], stack: contextlib.ExitStack) -> Node:
    data_dir.mkdir()
    errors = stack.enter_context(tempfile.TemporaryFile())
    argv = node_argv(data_dir, options, join, security)
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
    return Node(process, data_dir, errors)


def wait_ready(node: Node, name: str) -> None:
    try:
        node.address = await_ready(node.process, NODE_READY, STARTUP_TIMEOUT)
    except PeerError as exc:
        raise PeerError(f"{name}: {exc}; its stderr: {tail(node.errors) or '(empty)'}") from None


def start_ring(base: Path, options: Options, ring: Ring, stack: contextlib.ExitStack) -> None:
    """Start the first node, then the others joining it (all at once). Each node
    goes into `ring.nodes` as soon as it is spawned, so the caller can always stop it."""
    nodes = ring.nodes
    nodes.append(spawn(base / f"{ring.mode}-0", options, None, ring.security(f"{ring.mode}-0"), stack))
    wait_ready(nodes[0], f"{ring.mode} node 0")
    ring.first = nodes[0].address
    for index in range(1, options.nodes):
        nodes.append(spawn(base / f"{ring.mode}-{index}", options, ring.first, ring.security(f"{ring.mode}-{index}"), stack))
    for index, node in enumerate(nodes[1:], start=1):
        wait_ready(node, f"{ring.mode} node {index}")


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
    """All `count` ring positions found, and each one's successor list right as
    far as its replica holders (the next r − 1 other processes)."""
    nodes = sorted(view["nodes"], key=lambda node: int(node["id"], 16))
    if len(nodes) != count:
        return False
    refs = [NodeRef(int(node["id"], 16), node["address"]) for node in nodes]
    for index, node in enumerate(nodes):
        me, following = refs[index], refs[index + 1 :] + refs[:index]
        expected = merge_successor_list(me, following[0], following[1:], SUCCESSORS) if following else []
        holders = distinct_hosts(expected, replicas - 1, besides=me.address)
        upto = expected.index(holders[-1]) + 1 if holders else 0
        actual = [NodeRef(int(successor["id"], 16), successor["address"]) for successor in node["successors"]]
        if actual[:upto] != expected[:upto]:
            return False
    return True


def wait_for_ring(ring: Ring, options: Options) -> float:
    """Poll `chordcdn ring --check` until it passes with every node's replica set right; seconds waited."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < RING_TIMEOUT:
        try:
            argv = ring_argv(ring.first) + ([] if ring.pki else ["--insecure"])
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=RING_CALL_TIMEOUT, env=ring.client_env())
        except subprocess.TimeoutExpired:
            last = f"`chordcdn ring` took over {RING_CALL_TIMEOUT:g} s"
            continue
        if done.returncode == 0 and ring_is_ready(json.loads(done.stdout), options.nodes * options.vnodes, options.replicas):
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


async def run_round(client: DhtClient, number: int, source: Source, expected_cid: str | None, bound: float, mode: str) -> Round:
    """Put the file, then get it; a file put before must get the same CID again."""
    cid, put_seconds = await timed_put(client, source, bound)
    if expected_cid is not None and cid != expected_cid:
        raise BenchError(f"round {number} put gave CID {cid}, an earlier put of the same file gave {expected_cid}")
    get_seconds = await timed_get(client, cid, source, bound)
    done = Round(put_seconds, get_seconds, source.size, cid)
    fig = done.figures()
    progress(f"round {number} {mode:9}: put {fig['put_mb_per_s']:6.1f} MB/s  get {fig['get_mb_per_s']:6.1f} MB/s")
    return done


def client_tls(ring: Ring) -> Any:
    return ring.pki.credentials("bench-client", Role.CLIENT) if ring.pki else None


async def measure_ring_transport(ring: Ring, options: Options, results: Transfers) -> None:
    async with open_tcp_transport(None, tls=client_tls(ring)) as transport:
        with bounded("the transport measurement", options.link_seconds + 60):
            results.transport = await measure_transport(transport, ring.first, options.window, options.link_seconds)
    progress(f"our transport ({ring.mode}): {results.transport['mb_per_s']:.0f} MB/s of 256 KiB ping payloads")


async def transfer_round(ring: Ring, number: int, sources: list[Source], options: Options, results: Transfers) -> None:
    """One round's put and get through a fresh client of `ring`."""
    index = number - 1
    earlier = results.rounds[index - len(sources)].cid if index >= len(sources) else None
    async with open_tcp_transport(None, tls=client_tls(ring)) as transport:
        client = await DhtClient.via(transport, ring.first, window=options.window)
        done = await run_round(client, number, sources[index % len(sources)], earlier, options.transfer_timeout, ring.mode)
        results.rounds.append(done)
        for key, value in asdict(client.stats).items():
            results.client_stats[key] = results.client_stats.get(key, 0) + value


async def verify_ring(ring: Ring, sources: list[Source], options: Options, results: Transfers) -> None:
    async with open_tcp_transport(None, tls=client_tls(ring)) as transport:
        client = await DhtClient.via(transport, ring.first, window=options.window)
        results.verified_sha256 = await verify(client, results.rounds[0].cid, sources[0], options.transfer_timeout)


# -- where the bytes went -------------------------------------------------------------------------------


def directory_usage(directory: Path) -> dict[str, Any]:
    """All bytes under directory, and the block segment files among them."""
    total = value_bytes = value_files = 0
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        total += size
        if path.suffix in (".seg", ".blocks"):
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
        "fullest_over_mean": max(usage["value_bytes"] for usage in per_node.values()) * len(per_node) / (values or 1),
    }


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Results:
    ring_seconds: dict[str, float] = field(default_factory=dict)
    link: dict[str, float] = field(default_factory=dict)
    transfers: dict[str, Transfers] = field(default_factory=dict)
    spread: dict[str, dict[str, Any]] = field(default_factory=dict)
    shutdown: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(options: Options) -> Results:
    results = Results()
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_store-")))
        rings = [Ring("tls", LocalCluster(base / "pki")), Ring("plaintext", None)]
        try:
            for ring in rings:
                start_ring(base, options, ring, stack)
            for ring in rings:
                results.ring_seconds[ring.mode] = wait_for_ring(ring, options)
                progress(f"{options.nodes} nodes ({ring.mode}), ring ready after {results.ring_seconds[ring.mode]:.1f} s; first on {ring.first}")
            sources = [make_source(base, options.size, n) for n in range(options.rounds if options.fresh else 1)]
            results.link = measure_link(options.link_seconds)
            progress(f"raw TCP loopback: {results.link['mb_per_s']:.0f} MB/s")
            results.transfers = {ring.mode: Transfers() for ring in rings}
            for ring in rings:
                trio.run(measure_ring_transport, ring, options, results.transfers[ring.mode])
            for number in range(1, options.rounds + 1):
                for ring in rings:
                    trio.run(transfer_round, ring, number, sources, options, results.transfers[ring.mode])
            for ring in rings:
                trio.run(verify_ring, ring, sources, options, results.transfers[ring.mode])
                results.spread[ring.mode] = spread(ring.nodes, options.size * len(sources), options.replicas)
        finally:
            for ring in rings:
                results.shutdown[ring.mode] = stop_all(ring.nodes)
    return results


# -- the report ---------------------------------------------------------------------------------------------


def summarize(values: list[float], bar: float | None) -> dict[str, Any]:
    middle = median(values)
    return {"median_mb_per_s": middle, "median_mib_per_s": middle * MB / MIB, "bar_mb_per_s": bar, "met": bar is None or middle >= bar}


def mode_report(transfers: Transfers, link: dict[str, float], bars: bool) -> dict[str, Any]:
    rounds = [r.figures() for r in transfers.rounds]
    put = summarize([float(r["put_mb_per_s"]) for r in rounds], BARS["put"] if bars else None)
    get = summarize([float(r["get_mb_per_s"]) for r in rounds], BARS["get"] if bars else None)
    links = {"raw_tcp": link["mb_per_s"], "our_transport": transfers.transport["mb_per_s"]}
    return {
        "rounds": rounds,
        "put": put,
        "get": get,
        "first_round_put_mb_per_s": rounds[0]["put_mb_per_s"],
        "our_transport": transfers.transport,
        "verified_sha256": transfers.verified_sha256,
        "ratios": {
            f"{kind}_over_{name}": summary["median_mb_per_s"] / speed
            for kind, summary in (("put", put), ("get", get))
            for name, speed in links.items()
        },
        "client_stats": transfers.client_stats,
    }


def tls_over_plaintext(results: Results, kind: str) -> float:
    """Median of per-round ratios: each pair ran back to back."""
    pairs = zip(results.transfers["tls"].rounds, results.transfers["plaintext"].rounds)
    return median(float(t.figures()[f"{kind}_mb_per_s"]) / float(p.figures()[f"{kind}_mb_per_s"]) for t, p in pairs)


def report(results: Results, options: Options) -> dict[str, Any]:
    return {
        "benchmark": "put and get of one file through rings of chordcdn node processes on 127.0.0.1, mutual TLS and plaintext",
        "size_bytes": options.size,
        "nodes": options.nodes,
        "replicas": options.replicas,
        "window": options.window,
        "chunk_bytes": DEFAULT_CHUNK,
        "fresh_file_each_round": options.fresh,
        "modes": {mode: mode_report(results.transfers[mode], results.link, mode == "tls") for mode in MODES},
        "tls_over_plaintext": {kind: tls_over_plaintext(results, kind) for kind in ("put", "get")},
        "link": {"raw_tcp": results.link},
        "spread": results.spread,
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
    tls, plain = data["modes"]["tls"], data["modes"]["plaintext"]
    lines = [
        f"put and get of a {data['size_bytes'] / MIB:g} MiB file through {data['nodes']} chordcdn node processes "
        f"on 127.0.0.1, r = {data['replicas']}, {data['window']} blocks in flight; mutual TLS, then plaintext, each round",
        "",
        f"{'round':>6}  {'put, TLS':^30} {'put, plaintext':^30}   {'get, TLS':^30} {'get, plaintext':^30}",
    ]
    for number, (t, p) in enumerate(zip(tls["rounds"], plain["rounds"]), start=1):
        note = "" if number == 1 or data["fresh_file_each_round"] else "  (re-put: blocks already stored)"
        lines.append(
            f"{number:>6}  {rate(t['put_mb_per_s'])} {rate(p['put_mb_per_s'])}   {rate(t['get_mb_per_s'])} {rate(p['get_mb_per_s'])}{note}"
        )
    lines += [
        f"{'median':>6}  {rate(tls['put']['median_mb_per_s'])} {rate(plain['put']['median_mb_per_s'])}   "
        f"{rate(tls['get']['median_mb_per_s'])} {rate(plain['get']['median_mb_per_s'])}",
        f"with TLS: put {verdict(tls['put'])}; get {verdict(tls['get'])}",
        f"TLS / plaintext (median of per-round ratios): put {data['tls_over_plaintext']['put']:.2f}x, get {data['tls_over_plaintext']['get']:.2f}x",
        *fresh_note(data),
        "each ring's first file read back once more, untimed: SHA-256 "
        + ", ".join(f"{mode} {data['modes'][mode]['verified_sha256'][:16]}…" for mode in MODES) + " match the source",
        "",
    ]
    raw = data["link"]["raw_tcp"]
    lines.append(f"raw TCP loopback, one stream, 1 MiB writes, process to process: {rate(raw['mb_per_s'])}")
    for mode in MODES:
        ours, ratios = data["modes"][mode]["our_transport"], data["modes"][mode]["ratios"]
        lines += [
            f"our transport ({mode}), ping with 256 KiB payloads, {ours['in_flight']} in flight: {rate(ours['mb_per_s'])}",
            f"  median put = {ratios['put_over_raw_tcp']:.1%} of raw TCP, {ratios['put_over_our_transport']:.1%} of our transport; "
            f"get = {ratios['get_over_raw_tcp']:.1%} of raw TCP, {ratios['get_over_our_transport']:.1%} of our transport",
        ]
    lines.append("")
    for mode in MODES:
        spread_lines = render_spread(data["spread"][mode], data["replicas"])
        lines += [f"[{mode}] {spread_lines[0]}", *spread_lines[1:]]
        stats = {key: value for key, value in data["modes"][mode]["client_stats"].items() if value}
        if stats:
            lines.append(f"client ({mode}): {stats}")
        shutdown = data["shutdown"][mode]
        unclean = {name: code for name, code in shutdown["exit_codes"].items() if code != 0}
        lines.append(
            f"nodes ({mode}) stopped in {shutdown['seconds']:.1f} s after SIGTERM" + (f"; not cleanly: {unclean}" if unclean else "; all exited 0")
        )
    return lines


def fresh_note(data: dict[str, Any]) -> list[str]:
    """With --same-file only round 1 stores new blocks: say how that put fares against the bar."""
    tls = data["modes"]["tls"]
    if data["fresh_file_each_round"] or len(tls["rounds"]) < 2:
        return []
    first, bar = tls["first_round_put_mb_per_s"], tls["put"]["bar_mb_per_s"]
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
        f"  the fullest node holds {data['fullest_over_mean']:.2f} x the mean",
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
    parser.add_argument("--vnodes", type=integer(1, MAX_VNODES), default=1, metavar="V", help="ring positions per node process")
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
        vnodes=args.vnodes,
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
