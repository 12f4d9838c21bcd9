"""The `chordcdn` command: argument parsing and output for every subcommand.

Owns the user's side of the tools: flags, exit codes, text and JSON output.
Exit codes: 0 success; 1 a check found a problem or a transfer failed; 2 bad
usage or content not found; 3 the node named by --via or --join could not be reached.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import trio

from dht.addresses import MAX_VNODES
from dht.client import BadRange, BlockNotFound, PutFailed
from dht.errors import ChordError, LookupFailed, TransportError
from dht.identity import Role
from dht.merkle import DEFAULT_CHUNK, MAX_BLOCK, BlockError, parse_cid
from dht.scrub import DEFAULT_SCRUB_RATE
from dht.segmentstore import DEFAULT_OPEN_FILES, FSYNC_POLICIES, StoreError
from dht.storage import StorageConfig
from dht.ids import DEFAULT_BITS, IdSpace
from dht.node import LOOKUP_MODES, NodeConfig
from dht.messages import LookupResult, NodeInfo
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials
from .originrun import add_origin_command

from . import files, sim, simreport, simsweep
from .argtypes import address, byte_size, checked, integer, positive
from .cdndemo import run_cdn_demo
from .cluster import add_cluster_command
from .config import ConfigError, add_config_option, parse_args_with_config
from .edgerun import add_edge_command
from .simevents import load_events
from .simtime import parse_duration, parse_fraction, parse_rate
from .noderun import NodeSetup, prepare_server_process, run_node
from .ringwalk import RingView, node_json, render_ring, ring_problems, walk
from .security import add_credential_options, credentials_from

EXIT_PROBLEM, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """A failure to report on stderr with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


duration, fraction, rate = checked(parse_duration), checked(parse_fraction), checked(parse_rate)


def chunk_size(text: str) -> int:
    value = int(text)
    if not 0 < value <= MAX_BLOCK:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_BLOCK} bytes")
    return value


def emit(data: Any, as_json: bool, lines: Sequence[str]) -> None:
    print(json.dumps(data, indent=2) if as_json else "\n".join(lines))


# -- node ---------------------------------------------------------------------------

MIN_STABILIZE_HELP = "as neighbours churn, shorten maintenance down to this (default: fixed intervals)"


def cmd_node(args: argparse.Namespace) -> int:
    config = NodeConfig.every(
        args.stabilize_interval, bits=args.bits, successor_list_size=args.successors, rpc_timeout=args.rpc_timeout,
        min_stabilize_interval=args.min_stabilize_interval or 0.0, lookup_mode=args.lookup_mode,
    )
    tls = credentials_from(args, Role.NODE, bits=args.bits)
    if args.id and tls is not None:
        raise ValueError("--id: a node's ID comes from its certificate's key; choosing one needs --insecure")
    setup = NodeSetup(
        listen=args.listen, join=args.join, advertise=args.advertise,
        node_id=IdSpace(args.bits).parse_id(args.id) if args.id else None, config=config,
        storage=StorageConfig(replicas=args.replicas, repair_interval=args.repair_interval, scrub_rate=args.scrub_rate),
        data_dir=args.data, capacity=args.capacity, tls=tls, fsync=args.fsync, open_files=args.open_files, vnodes=args.vnodes,
    )
    prepare_server_process()
    report = lambda line: print(line, flush=True)  # noqa: E731
    try:
        trio.run(run_node, setup, report)
    except* ValueError as group:
        raise CliError(str(group.exceptions[0]), EXIT_USAGE) from None
    except* StoreError as group:
        raise CliError(f"cannot use the block store: {group.exceptions[0]}", EXIT_UNREACHABLE) from None
    except* ChordError as group:
        raise CliError(f"cannot join via {args.join}: {group.exceptions[0]}", EXIT_UNREACHABLE) from None
    except* OSError as group:
        raise CliError(f"cannot listen on {args.listen}: {group.exceptions[0]}", EXIT_UNREACHABLE) from None
    return 0


# -- ring and lookup ------------------------------------------------------------------


async def _with_client(via: str, work: Any, tls: TlsCredentials | None) -> Any:
    async with open_tcp_transport(None, tls=tls) as client:
        try:
            return await work(client)
        except ChordError as exc:
            raise CliError(f"cannot reach {via}: {exc}", EXIT_UNREACHABLE) from None


def cmd_ring(args: argparse.Namespace) -> int:
    tls = credentials_from(args)
    view: RingView = trio.run(_with_client, args.via, lambda client: walk(client, args.via, args.timeout), tls)
    space = IdSpace(view.nodes[0].bits)
    problems = ring_problems(view)
    data = {
        "nodes": [node_json(info, space) for info in view.nodes],
        "unreachable": sorted(view.unreachable),
        "consistent": not problems,
        "problems": problems,
    }
    summary = f"{len(view.nodes)} nodes; " + ("ring consistent" if not problems else f"{len(problems)} wrong links")
    emit(data, args.json, [*render_ring(view, space), summary])
    if args.check and problems:
        if not args.json:
            print("\n".join(f"wrong: {problem}" for problem in problems), file=sys.stderr)
        return EXIT_PROBLEM
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    async def ask(client: Any) -> tuple[IdSpace, LookupResult]:
        info = NodeInfo.from_wire(await client.call(args.via, "info", [], timeout=args.timeout))
        space = IdSpace(info.bits)
        try:
            key = space.key_for(args.key)
        except ValueError as exc:
            raise CliError(f"bad key: {exc}", EXIT_USAGE) from None
        return space, LookupResult.from_wire(await client.call(args.via, "lookup", [key], timeout=args.timeout), space)

    space, result = trio.run(_with_client, args.via, ask, credentials_from(args))
    owner = result.owner
    data = {
        "key": format(result.key, "x"),
        "owner": {"address": owner.address, "id": format(owner.id, "x")},
        "path": [args.via, *(hop.address for hop in result.path)],
        "hops": result.hops,
        "timeouts": result.timeouts,
    }
    lines = [
        f"key    {space.short(result.key)}…",
        f"owner  {owner.address} ({space.short(owner.id)}…)",
        f"path   {' -> '.join(data['path'])}",
        f"hops   {result.hops}",
    ]
    emit(data, args.json, lines)
    return 0


# -- put and get -------------------------------------------------------------------------


def cmd_put(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.file):
        raise CliError(f"{args.file}: no such file", EXIT_USAGE)
    tls = credentials_from(args, Role.CLIENT, Role.NODE)
    try:
        cid = trio.run(files.put_file, args.file, args.via, tls, args.chunk_size, args.quorum)
    except* ValueError as group:
        raise CliError(str(group.exceptions[0]), EXIT_USAGE) from None
    except* (TransportError, LookupFailed) as group:
        raise CliError(f"cannot reach the ring via {args.via}: {group.exceptions[0]}", EXIT_UNREACHABLE) from None
    except* PutFailed as group:
        raise CliError(str(group.exceptions[0]), EXIT_PROBLEM) from None
    emit({"cid": cid, "file": args.file, "size": os.path.getsize(args.file)}, args.json, [cid])
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    try:
        parse_cid(args.cid)
        start, end = files.parse_range(args.range) if args.range else (0, None)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    tls = credentials_from(args)
    target = open(args.output, "wb") if args.output else sys.stdout.buffer
    try:
        trio.run(files.get_file, args.cid, args.via, tls, target, bool(args.output), start, end)
    except* BlockNotFound:
        raise CliError(f"{args.cid}: not found", EXIT_USAGE) from None
    except* BadRange as group:
        raise CliError(str(group.exceptions[0]), EXIT_USAGE) from None
    except* BlockError as group:
        raise CliError(f"{args.cid}: refused a bad block: {group.exceptions[0]}", EXIT_PROBLEM) from None
    except* (TransportError, LookupFailed) as group:
        raise CliError(f"cannot reach the ring via {args.via}: {group.exceptions[0]}", EXIT_UNREACHABLE) from None
    finally:
        if args.output:
            target.close()
    return 0


# -- sim and demo ------------------------------------------------------------------


def cmd_sim(args: argparse.Namespace) -> int:
    if args.action == "sweep":
        return cmd_sim_sweep(args)
    if args.grid:
        raise CliError("--grid is for `chordcdn sim sweep`", EXIT_USAGE)
    options = sim_options(args)
    if args.log_level != "DEBUG":  # thousands of simulated nodes would drown the report
        logging.getLogger("dht").setLevel(logging.WARNING)
    with files.progress_bar("virtual time", None, options.scenario != "static") as advance:
        shown = [0.0]

        def progress(now: float, end: float) -> None:
            advance(now - shown[0])
            shown[0] = now

        summary, series, hops = sim.run_detailed(options, progress)
    if args.out:
        written = simreport.write_outputs(summary, series, hops, Path(args.out))
        print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    lines = [f"{key:24} {value:.4g}" if isinstance(value, float) else f"{key:24} {value}" for key, value in summary.items()]
    emit(summary, args.json, lines)
    return 0


def cmd_sim_sweep(args: argparse.Namespace) -> int:
    """Run the scenario over every point of --grid, on local cores or a Dask cluster."""
    try:
        grid = simsweep.parse_grid(args.grid or [])
        if not grid:
            raise simsweep.SweepError("a sweep needs at least one --grid NAME=V1,V2,...")
        chosen = simsweep.points(sim_options(args), grid)
    except simsweep.SweepError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    logging.getLogger("dht").setLevel(logging.WARNING)
    print(f"sweep: {len(chosen)} runs on {args.scheduler or 'local processes'}", file=sys.stderr)
    try:
        rows = simsweep.table(grid, simsweep.run_grid(chosen, args.workers, args.scheduler))
    except OSError as exc:
        raise CliError(f"cannot reach the Dask scheduler at {args.scheduler}: {exc}", EXIT_UNREACHABLE) from None
    if args.out:
        written = simreport.write_sweep_outputs(grid, rows, Path(args.out))
        print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    header = list(rows[0])
    lines = ["  ".join(f"{name:>12}" for name in header)]
    lines += ["  ".join(f"{value:>12.4g}" if isinstance(value, float) else f"{value!s:>12}" for value in row.values()) for row in rows]
    emit({"grid": grid, "rows": rows}, args.json, lines)
    return 0


def sim_options(args: argparse.Namespace) -> sim.SimOptions:
    """The sim options the flags give (CliError on a bad combination)."""
    try:
        return sim.SimOptions(
            scenario=args.scenario,
            nodes=args.nodes,
            lookups=args.lookups,
            seed=args.seed,
            bits=args.bits,
            build=args.build,
            latency=args.latency,
            latency_model=args.latency_model,
            lookup_deadline=args.lookup_deadline or 0.0,
            lookup_mode=args.lookup_mode,
            proximity_fingers=not args.no_proximity_fingers,
            warmup=args.warmup or 0.0,
            vnodes=args.vnodes,
            stabilize_interval=args.stabilize_interval,
            min_stabilize_interval=args.min_stabilize_interval or 0.0,
            successors=args.successors,
            duration=args.duration,
            fail_fraction=args.fail_fraction,
            rate=args.rate,
            lookup_rate=args.lookup_rate,
            blocks=args.blocks,
            replicas=args.replicas,
            graceful_fraction=args.graceful_fraction,
            sample_interval=args.sample_interval,
            repair_interval=args.repair_interval,
            session_median=args.session_median or 0.0,
            sessions=args.sessions,
            events=tuple(load_events(args.events)) if args.events else (),
        )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def cmd_demo(args: argparse.Namespace) -> int:
    def report(line: str) -> None:
        print(line, flush=True)

    return trio.run(functools.partial(run_cdn_demo, report, nodes=args.nodes, edges=args.edges, once=args.once))


# -- wiring -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chordcdn",
        description="A peer-to-peer content delivery network: Chord ring nodes that store verified blocks.",
        epilog="Exit codes: 0 ok; 1 a check found a problem or a transfer failed; "
        "2 bad usage or not found; 3 a node could not be reached.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = commands.add_parser("node", help="run a ring node in the foreground; SIGTERM or Ctrl-C leaves gracefully")
    node.add_argument("--listen", type=address, required=True, metavar="HOST:PORT", help="port 0 picks a free one; [::]:PORT for IPv6")
    node.add_argument("--advertise", type=address, metavar="HOST:PORT",
                      help="the address peers reach this node at (needed when --listen is 0.0.0.0 or [::]; port 0: the bound port)")
    node.add_argument("--join", type=address, metavar="HOST:PORT", help="any node of the ring (omit to start one)")
    node.add_argument("--id", metavar="HEX", help="node ID, --insecure only (default: from the certificate's key; plaintext: SHA-256 of the address)")
    node.add_argument("--stabilize-interval", type=positive(), default=1.0, metavar="S")
    node.add_argument("--min-stabilize-interval", type=positive(), metavar="S",
                      help=MIN_STABILIZE_HELP)
    node.add_argument("--lookup-mode", default="iterative", choices=LOOKUP_MODES,
                      help="lookups this node makes: iterative, or recursive (hops pass the query on; iterative if that fails)")
    node.add_argument("--successors", type=int, default=8, metavar="R", help="successor list length")
    node.add_argument("--vnodes", type=integer(1, MAX_VNODES), default=1, metavar="V",
                      help="ring positions this node holds (virtual nodes: keys spread more evenly; each position stabilizes, fingers are fixed in turn)")
    node.add_argument("--rpc-timeout", type=positive(), default=1.0, metavar="S")
    node.add_argument("--data", metavar="DIR", help="keep blocks in this directory (default: in memory)")
    node.add_argument("--replicas", type=int, default=3, metavar="R", help="copies of each block")
    node.add_argument("--repair-interval", type=positive(), default=30.0, metavar="S")
    node.add_argument("--fsync", default="always", choices=FSYNC_POLICIES,
                      help="always: a put is acknowledged once on disk (concurrent puts share an fsync); never: leave it to the kernel")
    node.add_argument("--scrub-rate", type=byte_size, default=DEFAULT_SCRUB_RATE, metavar="BYTES",
                      help="re-read and re-hash stored blocks at this many bytes per second, e.g. 8MiB (0: off)")
    node.add_argument("--open-files", type=integer(1, 1 << 20), default=DEFAULT_OPEN_FILES, metavar="N",
                      help="segment files kept open at once (default: %(default)s)")
    node.add_argument("--capacity", type=byte_size, metavar="SIZE", help="refuse new blocks past this many bytes, e.g. 50GiB (default: no limit)")
    node.add_argument("--bits", type=int, default=DEFAULT_BITS, help=argparse.SUPPRESS)
    add_credential_options(node)
    add_config_option(node)
    node.set_defaults(run=cmd_node)

    put = commands.add_parser("put", help="store a file in the ring and print its CID")
    put.add_argument("file", metavar="FILE")
    put.add_argument("--via", type=address, required=True, metavar="HOST:PORT")
    put.add_argument("--chunk-size", type=chunk_size, default=DEFAULT_CHUNK, metavar="BYTES")
    put.add_argument("--quorum", type=int, metavar="W", help="copies that must acknowledge (default: all r)")
    put.add_argument("--json", action="store_true")
    add_credential_options(put)
    put.set_defaults(run=cmd_put)

    get = commands.add_parser("get", help="fetch a file by CID, verifying every block")
    get.add_argument("cid", metavar="CID")
    get.add_argument("--via", type=address, required=True, metavar="HOST:PORT")
    get.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    get.add_argument("--range", metavar="START-END", help="bytes START..END inclusive, or START- to the end")
    add_credential_options(get)
    get.set_defaults(run=cmd_get)

    ring = commands.add_parser("ring", help="walk the ring from any node and print it")
    ring.add_argument("--via", type=address, required=True, metavar="HOST:PORT")
    ring.add_argument("--check", action="store_true", help="exit 1 when any successor or predecessor is wrong")
    ring.add_argument("--json", action="store_true")
    ring.add_argument("--timeout", type=positive(), default=2.0, metavar="S")
    add_credential_options(ring)
    ring.set_defaults(run=cmd_ring)

    lookup = commands.add_parser("lookup", help="find the node responsible for a key")
    lookup.add_argument("key", metavar="KEY", help='"0x…" or full-width hex is an ID; any other text is hashed')
    lookup.add_argument("--via", type=address, required=True, metavar="HOST:PORT")
    lookup.add_argument("--json", action="store_true")
    lookup.add_argument("--timeout", type=positive(), default=15.0, metavar="S")
    add_credential_options(lookup)
    lookup.set_defaults(run=cmd_lookup)

    simulate = commands.add_parser("sim", help="run real node code on a simulated network in virtual time")
    simulate.add_argument("action", nargs="?", default="run", choices=["run", "sweep"],
                          help="run: one scenario (default); sweep: the scenario over every point of --grid")
    simulate.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                          help="sweep: a setting and its values, e.g. session_median=1.4m,1h (repeat for more settings)")
    simulate.add_argument("--workers", type=integer(1, 1024), metavar="N", help="sweep: local processes (default: one per core)")
    simulate.add_argument("--scheduler", metavar="ADDRESS", help="sweep: run on this Dask distributed scheduler, e.g. tcp://10.0.0.5:8786")
    simulate.add_argument("--scenario", default="static", choices=sorted(sim.SCENARIOS))
    simulate.add_argument("--nodes", type=int, default=1024)
    simulate.add_argument("--lookups", type=int, default=10_000)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--bits", type=int, default=DEFAULT_BITS)
    simulate.add_argument("--build", default="ideal", choices=sim.BUILDS,
                          help="ideal: install stabilized routing state; join: real joins, then wait for stabilization")
    simulate.add_argument("--latency", type=positive(), default=0.01, metavar="S", help="one-way link latency (constant model)")
    simulate.add_argument("--latency-model", default="constant", choices=sim.MODELS,
                          help="constant: --latency on every link; geo: nodes on a globe, median round trip about 150 ms")
    simulate.add_argument("--lookup-deadline", type=duration, metavar="S", help="a lookup not answered within S counts as failed (default: 10 s)")
    simulate.add_argument("--lookup-mode", default="iterative", choices=LOOKUP_MODES,
                          help="iterative: the asker asks each hop; recursive: hops pass the query on, the owner answers")
    simulate.add_argument("--no-proximity-fingers", action="store_true",
                          help="each finger the first node of its interval, not the nearest of its first 8")
    simulate.add_argument("--warmup", type=duration, metavar="S",
                          help="static: run maintenance S virtual seconds before the lookups (fingers choose near nodes)")
    simulate.add_argument("--vnodes", type=integer(1, MAX_VNODES), default=1, metavar="V",
                          help="ring positions per node (virtual nodes, sharing one finger table); static with --blocks reports keys per node")
    simulate.add_argument("--stabilize-interval", type=positive(), default=30.0, metavar="S",
                          help="maintenance interval while nothing changes (also fingers and predecessor checks)")
    simulate.add_argument("--min-stabilize-interval", type=positive(), metavar="S",
                          help=MIN_STABILIZE_HELP)
    simulate.add_argument("--successors", type=int, default=8, metavar="R")
    simulate.add_argument("--duration", type=duration, default=600.0, help="virtual time after the set-up: 2h, 90m, 3600s or 3600")
    simulate.add_argument("--fail-fraction", type=fraction, default=0.2, metavar="P", help="fail: share of nodes that crash at once")
    simulate.add_argument("--rate", type=rate, default=0.05, metavar="R", help="churn: joins plus departures per virtual second")
    simulate.add_argument("--lookup-rate", type=rate, default=1.0, metavar="L", help="lookups per virtual second")
    simulate.add_argument("--blocks", type=int, default=1000, metavar="K", help="blocks stored before the run")
    simulate.add_argument("--replicas", type=int, default=3, metavar="R")
    simulate.add_argument("--session-median", type=duration, metavar="T", help="churn: session lengths with this median instead of --rate")
    simulate.add_argument("--sessions", default="exponential", choices=sim.SESSION_DISTRIBUTIONS, help="session length distribution")
    simulate.add_argument("--graceful-fraction", type=fraction, default=0.0, metavar="G", help="churn: share of departures that leave gracefully")
    simulate.add_argument("--sample-interval", type=duration, default=10.0, metavar="S")
    simulate.add_argument("--repair-interval", type=duration, default=30.0, metavar="S")
    simulate.add_argument("--events", metavar="FILE", help="fixed events (crashes, partitions) as JSON; see tools/simevents.py")
    simulate.add_argument("--out", metavar="DIR", help="write summary.json, CSV time series and PNG plots here")
    simulate.add_argument("--json", action="store_true")
    simulate.set_defaults(run=cmd_sim)

    add_origin_command(commands)

    demo = commands.add_parser("demo", help="a whole CDN on loopback: an origin, a ring of 8 nodes and 3 edges")
    demo.add_argument("--nodes", type=integer(1, 64), default=8)
    demo.add_argument("--edges", type=integer(1, 16), default=3)
    demo.add_argument("--once", action="store_true", help="check that content flows through every tier, print it, and exit")
    demo.set_defaults(run=cmd_demo)

    add_edge_command(commands)
    add_cluster_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args_with_config(build_parser(), argv)
    except ConfigError as exc:
        print(f"chordcdn: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except CliError as exc:
        print(f"chordcdn {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:
        print(f"chordcdn {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
