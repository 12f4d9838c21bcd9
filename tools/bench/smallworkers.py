"""The worker side of bench_small: one system's round in a process of its own. Ours is a
ring of nodes in one trio process, kademlia a set of servers in one asyncio process; the
parent starts each worker (`run_worker`) and the worker runs the workload (`worker_main`)
and prints its figures as JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from pathlib import Path
from statistics import median
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from dht.client import DhtClient
from dht.errors import ChordError
from dht.identity import Role
from dht.node import ChordNode, NodeConfig
from dht.storage import StorageConfig
from dht.tls import TlsCredentials
from tools.bench.bench_rpc import kademlia_version, progress, stop
from tools.bench.common import run_interruptibly
from tools.bench.smallload import (
    FINGER_TIMEOUT,
    MODES,
    NODES,
    REPLICAS,
    BenchError,
    OperationFailed,
    OperationTimeout,
    Operations,
    Options,
    Phase,
    Plan,
    plan_of,
    run_workload,
)
from tools.cluster import LocalCluster
from tools.noderun import serve_local_node

ROOT = Path(__file__).resolve().parents[2]
OP_TIMEOUT = 10.0  # seconds for one put or get
RING_TIMEOUT = 90.0  # seconds for predecessors and successors to be right
KADEMLIA_SETUP_TIMEOUT = 60.0
WORKER_GRACE = 30.0  # seconds past a worker's own lifetime before it is stopped


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


def worker_argv(system: str, options: Options, pki: Path) -> list[str]:
    argv = [sys.executable, "-m", "tools.bench.bench_small", "--worker", system, "--values", str(options.values)]
    argv += ["--big-values", str(options.big_values), "--ours-gc", options.ours_gc, "--lifetime", f"{options.lifetime:g}"]
    return argv + (["--pki", str(pki)] if system == "tls" else [])


def run_worker(system: str, options: Options, pki: Path) -> dict[str, Any]:
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
