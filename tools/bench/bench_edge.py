"""The edge serving memory hits as a user runs it, against nginx as a caching reverse proxy of the same origin.

What it measures, nginx and the edge in the same run:
- Memory hits: wrk against `chordcdn edge` and against nginx (Debian's package,
  `proxy_cache` on a cache directory), both in front of the same origin and both
  serving cache hits: a 1 KiB object (req/s) and a 1 MiB object (MiB/s). nginx runs
  with `worker_processes 1` (the peer: the edge is one process) and, unless
  `--no-nginx-auto`, with `worker_processes auto` (one worker per core).
- Many connections: `wrk -t2 -c1000 -d10s --latency --timeout 10s` on the 1 KiB
  object, for nginx (one worker) and the edge: p50, p99 and the slowest response, and
  wrk's timeouts (responses slower than 10 s, or none). While it runs, the servers'
  accept queues are sampled (`ss`'s Recv-Q of the listening socket, every 0.1 s):
  connections the kernel has set up, whose requests are sent and timed by wrk, but
  that the server has not accepted yet.
- The edge's access log: after the run, its lines are counted against the requests
  the edge was sent (wrk's completed requests, plus the checks; at most a run's
  connections more were in flight when each wrk run stopped).

The edge runs as a user runs it: `chordcdn edge --listen 127.0.0.1:PORT --name e1
--origin URL --mem-cache 256MiB`, nothing else, so at the default log level its access
log is on (written to stderr, which goes to a file). `--quiet-edge` measures a second
edge with `--log-level WARNING` (no access log) in the same run, for the log's cost;
`--edge-root DIR` runs the edges from another checkout (say `git archive HEAD`
unpacked there) for a before-and-after.

The bars (issue 12's): for 1 KiB, the edge's req/s >= 0.40 x nginx's; for 1 MiB, its
MiB/s >= 0.75 x nginx's, both against nginx with one worker; with 1,000 connections, no
response later than 1 s (the slowest, in every round, and no wrk timeout) and the
edge's p99 <= 3 x nginx's.

How:
- The origin serves a generated directory with small.bin (1 KiB) and large.bin
  (1 MiB): `chordcdn origin --root DIR --listen 127.0.0.1:PORT --cache-control
  "/=public, max-age=86400"` (its default max-age=60 would let entries expire during
  the run), or with `--origin-cmd stdlib` Python's `http.server` in its place,
  sending the same Cache-Control.
- nginx gets a generated config in a temporary directory (`daemon off`, pid, logs,
  temp and cache paths there; `proxy_cache_valid 200 10m`; `X-Cache-Status` header;
  sendfile without `tcp_nopush`, which stalled nginx on 64-100 KiB objects).
- Every server listens on a loopback port picked here; it is ready once it answers HTTP.
- Each cache is warmed (GETs until a response is a hit; the response after must be
  one too: nginx's `X-Cache-Status: HIT`, our `Cache-Status` containing "hit"), and
  every body is checked against the file. Before each wrk run the object is fetched
  once more and must still be a hit.
- wrk runs per round over every size and server, the order rotating per round so
  slow spells of the shared machine hit all; the report gives medians across rounds
  (for the slowest response, the worst round). wrk's Transfer/sec counts headers and
  bodies, in binary units (its "MB" is MiB). Two wrk threads by default, so that wrk
  is not the limit at 1 MiB; its CPU is reported.

    python -m tools.bench.bench_edge [--rounds 3] [--duration 5] [--threads 2] [--connections 32]
        [--many-connections 1000] [--many-duration 10] [--no-many | --no-hits] [--quiet-edge] [--edge-root DIR]
        [--origin-cmd chordcdn|stdlib] [--no-nginx-auto] [--json PATH]

Needs wrk and nginx: as root it installs Debian's packages when they are missing
(dev.py's installer); elsewhere `apt-get install -y wrk nginx`. Every child process gets
SIGTERM at the end, on error too, and the ports are checked to be free again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable, Iterator, Sequence

from tools.bench.common import run_interruptibly
from tools.bench.httpbench import (
    add_wrk_arguments,
    BenchError,
    Child,
    ListenQueue,
    WrkResult,
    child_process,
    find_wrk,
    free_port,
    http_get,
    install_missing,
    is_listening,
    run_wrk,
    summarize,
    wrk_version,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
OBJECTS = {"1KiB": ("small.bin", 1024), "1MiB": ("large.bin", 1024 * 1024)}  # size label -> (file, bytes)
BARS = {"1KiB": ("requests_per_s", 0.40), "1MiB": ("transfer_mib_per_s", 0.75)}  # size label -> (figure, edge/nginx at least)
MANY_OBJECT = "1KiB"
MANY_TIMEOUT = "10s"  # wrk's --timeout: slower responses still enter the latency figures
BAR_SLOWEST_S = 1.0  # with many connections, no response later than this
BAR_P99_OVER_NGINX = 3.0
HEADLINE = "nginx"  # the nginx with one worker
EDGE = "edge"  # the edge as a user runs it
QUIET_EDGE = "edge-quiet"  # --log-level WARNING: no access log
ORIGIN_CACHE_CONTROL = "/=public, max-age=86400"  # our origin's default max-age=60 would expire entries mid-run
WARM_TRIES = 5
PACKAGES = {"wrk": "wrk", "nginx": "nginx", "ss": "iproute2"}  # command -> Debian package
NGINX_MISSING = "nginx is not installed: install it with `apt-get install -y nginx` (Debian's package) and run again"
ACCESS_LINE = re.compile(r'^\d{4}-\d\d-\d\dT[\d:.]+Z \S+ "|^\{"time": |chordcdn\.access: ')  # text, json, logging's (before)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """A cache under test: where it listens, how it says a response was a hit, and
    how many requests the bench sent it beside wrk's."""

    name: str
    port: int
    cache_header: str
    is_hit: Callable[[str], bool]
    child: Child
    checks: int = 0


def nginx_hit(value: str) -> bool:
    return value.strip().upper() == "HIT"


def edge_hit(value: str) -> bool:
    return "hit" in value.lower()


def chordcdn_command(root: Path | None = None) -> list[str]:
    """The chordcdn console script beside this Python (the project's .venv), else the
    module; the module, run from `root`, for another checkout."""
    script = Path(sys.executable).parent / "chordcdn"
    return [str(script)] if script.exists() and root is None else [sys.executable, "-m", "tools.cli"]


def subcommand_missing(command: Sequence[str], subcommand: str, cwd: Path = ROOT) -> str | None:
    """Why `chordcdn SUBCOMMAND --help` fails, or None if it works."""
    shown = " ".join([*command, subcommand, "--help"])
    try:
        done = subprocess.run([*command, subcommand, "--help"], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{shown}` could not run: {exc}"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return f"`{shown}` exited with code {done.returncode}" + (f": {said[-1]}" if said else "")
    return None


def make_site(root: Path) -> dict[str, bytes]:
    """The origin's directory: each object's file with random content; returns path -> content."""
    root.mkdir(parents=True, exist_ok=True)
    contents = {}
    for name, size in OBJECTS.values():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        contents[f"/{name}"] = data
    return contents


def serve_stdlib_origin(root: str, port: int) -> None:
    """The stand-in origin: Python's http.server on `root`, speaking HTTP/1.1, with the
    Cache-Control our origin is given (http.server sends none, and a cache may then
    store nothing), quiet, leaving with code 0 on SIGTERM."""
    import functools
    import http.server
    import signal

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def end_headers(self) -> None:
            self.send_header("Cache-Control", ORIGIN_CACHE_CONTROL.partition("=")[2])
            super().end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = http.server.ThreadingHTTPServer((HOST, port), functools.partial(Handler, directory=root))
    server.daemon_threads = True
    with server:
        server.serve_forever()


def origin_argv(kind: str, command: Sequence[str], log_level: str, root: Path, port: int) -> list[str]:
    if kind == "stdlib":
        return [sys.executable, "-m", "tools.bench.bench_edge", "--serve-stdlib-origin", str(root), str(port)]
    return [*command, "--log-level", log_level, "origin", "--root", str(root), "--listen", f"{HOST}:{port}", "--cache-control", ORIGIN_CACHE_CONTROL]


def edge_argv(command: Sequence[str], port: int, origin_port: int, mem_cache: str, quiet: bool = False) -> list[str]:
    """The edge as a user runs it (the default log level: access log on), or with
    `--log-level WARNING` when `quiet`."""
    return [
        *command, *(["--log-level", "WARNING"] if quiet else []), "edge",
        "--listen", f"{HOST}:{port}", "--name", "e1", "--origin", f"http://{HOST}:{origin_port}", "--mem-cache", mem_cache,
    ]  # fmt: skip


def nginx_config(directory: Path, port: int, origin_port: int, workers: str) -> str:
    """A caching reverse proxy of the origin, with every path inside `directory`.
    Not `tcp_nopush` (TCP_CORK with sendfile): with it each 64-100 KiB response waited
    about 40 ms, and nginx served 760-1,020 req/s instead of 16,000-21,000 (wrk -t2
    -c32, one worker, 2026-11-29)."""
    d = directory
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:16m max_size=1g inactive=60m use_temp_path=off;

    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;

    upstream origin {{
        server {HOST}:{origin_port};
        keepalive 16;
    }}

    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


def nginx_version(nginx: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
        return (done.stderr or done.stdout).strip().rpartition("/")[2] or None
    return None


@contextlib.contextmanager
def running_nginx(nginx: str, base: Path, name: str, workers: str, origin_port: int, exits: dict[str, Any]) -> Iterator[Server]:
    directory = base / name
    directory.mkdir()
    if os.geteuid() == 0:  # nginx's workers run as nobody: they must reach their cache and temp directories
        for path in (base, directory):
            path.chmod(0o755)
    port = free_port(HOST)
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, origin_port, workers))
    argv = [nginx, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
    with child_process(argv, name, log_dir=base, exits=exits) as child:
        child.wait_for_http(HOST, port)
        yield Server(name, port, "x-cache-status", nginx_hit, child)


@contextlib.contextmanager
def running_edge(argv: list[str], name: str, port: int, base: Path, cwd: Path, results: Results) -> Iterator[Server]:
    """An edge process; once it has stopped (its access log written out), its log's
    access lines are counted into `results`."""
    with contextlib.ExitStack() as stack:
        server: Server | None = None

        @stack.callback
        def count() -> None:
            if server is not None:
                results.access_lines[name] = access_lines(server.child.log)

        child = stack.enter_context(child_process(argv, name, log_dir=base, cwd=cwd, exits=results.exits))
        child.wait_for_http(HOST, port, "/small.bin")
        server = Server(name, port, "cache-status", edge_hit, child, checks=1)
        yield server


def access_lines(log: Path) -> int:
    """The access-log lines in a process's output (other log lines are not counted)."""
    with open(log, encoding="utf-8", errors="replace") as lines:
        return sum(1 for line in lines if ACCESS_LINE.search(line))


# -- warming and checking hits ------------------------------------------------------------------------


def fetch_checked(server: Server, path: str, expected: bytes) -> str:
    """GET path; check status and body; return the cache-status header's value."""
    server.checks += 1
    reply = http_get(HOST, server.port, path)
    if reply.status != 200:
        raise BenchError(f"{server.name}: GET {path} answered {reply.status}, not 200")
    if reply.body != expected:
        raise BenchError(f"{server.name}: GET {path} returned {len(reply.body)} bytes that differ from the origin's file ({len(expected)} bytes)")
    return reply.headers.get(server.cache_header, "")


def warm(server: Server, contents: dict[str, bytes]) -> dict[str, list[str]]:
    """GET each object until a hit, then once more, which must be a hit too; return the
    cache statuses seen, per path."""
    seen: dict[str, list[str]] = {}
    for path, expected in contents.items():
        statuses = seen.setdefault(path, [])
        for _ in range(WARM_TRIES):
            statuses.append(fetch_checked(server, path, expected))
            if server.is_hit(statuses[-1]):
                break
        else:
            raise BenchError(f"{server.name}: {path} was never a cache hit in {WARM_TRIES} GETs ({server.cache_header}: {statuses})")
        statuses.append(fetch_checked(server, path, expected))
        if not server.is_hit(statuses[-1]):
            raise BenchError(f"{server.name}: {path} was a hit, then not ({server.cache_header}: {statuses})")
    return seen


def check_hit(server: Server, label: str, contents: dict[str, bytes], results: Results, round_no: int) -> None:
    """Before a wrk run: the server is up and the object still a hit."""
    server.child.check_alive()
    path = f"/{OBJECTS[label][0]}"
    status = fetch_checked(server, path, contents[path])
    if not server.is_hit(status):
        results.not_hits.append(f"round {round_no} {server.name} {path}: {server.cache_header}: {status!r}")


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class ManyRun:
    """One run with many connections, and the server's accept queue meanwhile."""

    wrk: WrkResult
    queue_most: int
    queue_busy_until_s: float


@dataclass
class Results:
    samples: dict[str, dict[str, list[WrkResult]]] = field(default_factory=dict)  # server -> size label -> rounds
    many: dict[str, list[ManyRun]] = field(default_factory=dict)  # server -> rounds
    warm_statuses: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    not_hits: list[str] = field(default_factory=list)  # "server path status" for a pre-run check that was not a hit
    notes: list[str] = field(default_factory=list)
    exits: dict[str, Any] = field(default_factory=dict)
    ports_left_listening: list[int] = field(default_factory=list)
    access_lines: dict[str, int] = field(default_factory=dict)  # edge -> access-log lines written
    sent: dict[str, dict[str, int]] = field(default_factory=dict)  # edge -> requests: wrk's, checks, in flight at most


def hits_round(servers: list[Server], contents: dict[str, bytes], args: argparse.Namespace, results: Results, round_no: int) -> None:
    """Every object on every server, once: wrk with --threads and --connections."""
    for label, (name, _) in OBJECTS.items():
        for server in rotated(servers, round_no):
            check_hit(server, label, contents, results, round_no)
            result = run_wrk(f"http://{HOST}:{server.port}/{name}", threads=args.threads, connections=args.connections, duration=args.duration)
            results.samples[server.name][label].append(result)
            tally(results, server, result, args.connections)
            errors = f"  ERRORS {result.errors}" if result.errors else ""
            progress(
                f"round {round_no} {label:4} {server.name:10} {result.requests_per_s:10,.0f} req/s "
                f"{result.transfer_mib_per_s:9,.1f} MiB/s  p50 {result.latency_percentiles_us.get('50', 0):7.0f} us  "
                f"p99 {result.latency_percentiles_us.get('99', 0):7.0f} us  wrk cpu {result.client_cpu or 0:4.2f}{errors}"
            )


def many_round(servers: list[Server], contents: dict[str, bytes], args: argparse.Namespace, results: Results, round_no: int) -> None:
    """The 1 KiB object with many keep-alive connections, on nginx (one worker) and the edges."""
    for server in rotated([s for s in servers if s.name != "nginx-auto"], round_no):
        check_hit(server, MANY_OBJECT, contents, results, round_no)
        url = f"http://{HOST}:{server.port}/{OBJECTS[MANY_OBJECT][0]}"
        with ListenQueue(server.port) as queue:
            result = run_wrk(url, threads=args.many_threads, connections=args.many_connections, duration=args.many_duration,
                             extra=["--timeout", MANY_TIMEOUT])  # fmt: skip
        results.many.setdefault(server.name, []).append(ManyRun(result, queue.most, queue.busy_until))
        tally(results, server, result, args.many_connections)
        pct = result.latency_percentiles_us
        progress(
            f"round {round_no} -c{args.many_connections} {server.name:10} {result.requests_per_s:10,.0f} req/s  "
            f"p50 {pct.get('50', 0) / 1000:7.1f} ms  p99 {pct.get('99', 0) / 1000:7.1f} ms  max {(result.latency_max_us or 0) / 1000:7.1f} ms  "
            f"timeouts {result.socket_errors.get('timeout', 0)}  accept queue up to {queue.most} until {queue.busy_until:.1f} s"
        )


def rotated(servers: list[Server], round_no: int) -> list[Server]:
    """The servers in this round's order, so slow spells of the machine hit each in turn."""
    shift = (round_no - 1) % len(servers)
    return servers[shift:] + servers[:shift]


def tally(results: Results, server: Server, result: WrkResult, connections: int) -> None:
    if server.name in (EDGE, QUIET_EDGE):
        sent = results.sent.setdefault(server.name, {"wrk": 0, "in_flight_at_most": 0})
        sent["wrk"] += result.requests
        sent["in_flight_at_most"] += connections


def start_origin(stack: contextlib.ExitStack, args: argparse.Namespace, command: list[str], base: Path, results: Results) -> tuple[int, dict[str, bytes]]:
    contents = make_site(base / "site")
    origin_port = free_port(HOST)
    origin_cmd = origin_argv(args.origin_cmd, command, args.log_level, base / "site", origin_port)
    origin = stack.enter_context(child_process(origin_cmd, "origin", log_dir=base, cwd=ROOT, exits=results.exits))
    origin.wait_for_http(HOST, origin_port, "/small.bin")
    for path, expected in contents.items():
        reply = http_get(HOST, origin_port, path)
        if reply.status != 200 or reply.body != expected:
            raise BenchError(f"origin: GET {path} answered {reply.status} with {len(reply.body)} bytes, not the file")
    return origin_port, contents


def start_servers(stack: contextlib.ExitStack, args: argparse.Namespace, base: Path, origin_port: int, results: Results) -> list[Server]:
    nginx = shutil.which("nginx")
    if nginx is None:
        raise BenchError(NGINX_MISSING)
    servers = [stack.enter_context(running_nginx(nginx, base, HEADLINE, "1", origin_port, results.exits))]
    if args.nginx_auto:
        servers.append(stack.enter_context(running_nginx(nginx, base, "nginx-auto", "auto", origin_port, results.exits)))
    cwd = args.edge_root or ROOT
    command = chordcdn_command(args.edge_root)
    missing = subcommand_missing(command, "edge", cwd)
    if missing:
        results.notes.append(f"edge skipped: {missing}")
        progress(f"bench_edge: the edge is skipped: {missing}")
        return servers
    for name in (EDGE, QUIET_EDGE) if args.quiet_edge else (EDGE,):
        port = free_port(HOST)
        argv = edge_argv(command, port, origin_port, args.mem_cache, quiet=name == QUIET_EDGE)
        servers.append(stack.enter_context(running_edge(argv, name, port, base, cwd, results)))
    return servers


def warm_all(servers: list[Server], contents: dict[str, bytes], results: Results) -> list[Server]:
    """The servers whose caches could be warmed (nginx must be; an edge that fails is dropped)."""
    warmed = []
    for server in servers:
        try:
            results.warm_statuses[server.name] = warm(server, contents)
        except BenchError as exc:
            if server.name in (HEADLINE, "nginx-auto"):
                raise
            results.notes.append(f"edge dropped: {exc}")  # nginx is still measured
            progress(f"bench_edge: {server.name} is dropped: {exc}")
            continue
        results.samples[server.name] = {label: [] for label in OBJECTS}
        warmed.append(server)
    return warmed


def run(args: argparse.Namespace) -> Results:
    install_missing(PACKAGES)
    find_wrk()
    command = chordcdn_command()
    if args.origin_cmd == "chordcdn" and (why := subcommand_missing(command, "origin")):
        raise BenchError(f"our origin cannot run ({why}); use --origin-cmd stdlib for Python's http.server instead")
    results = Results()
    ports: list[int] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp, contextlib.ExitStack() as stack:
            base = Path(tmp)
            origin_port, contents = start_origin(stack, args, command, base, results)
            ports.append(origin_port)
            servers = start_servers(stack, args, base, origin_port, results)
            ports.extend(server.port for server in servers)
            servers = warm_all(servers, contents, results)
            progress(f"origin ({args.origin_cmd}) on {HOST}:{origin_port}; " + ", ".join(f"{s.name} on {HOST}:{s.port}" for s in servers) + "; caches warm")
            for round_no in range(1, args.rounds + 1):
                if args.hits:
                    hits_round(servers, contents, args, results, round_no)
                if args.many:
                    many_round(servers, contents, args, results, round_no)
            for server in servers:
                server.child.check_alive()
                if server.name in results.sent:
                    results.sent[server.name]["checks"] = server.checks
    finally:
        time.sleep(0.2)
        results.ports_left_listening = [port for port in ports if is_listening(HOST, port)]
        if results.ports_left_listening:
            progress(f"bench_edge: WARNING: still listening after the run: {results.ports_left_listening}")
    return results


# -- the report ---------------------------------------------------------------------------------------


def comparisons(servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each edge over each nginx, per object, with the bar against nginx with one worker."""
    found: dict[str, Any] = {}
    for label, (figure, bar) in BARS.items():
        entry: dict[str, Any] = {"figure": figure, "bar": bar}
        for edge in (EDGE, QUIET_EDGE):
            for nginx_name in (HEADLINE, "nginx-auto"):
                ours = (servers.get(edge) or {}).get(label)
                theirs = (servers.get(nginx_name) or {}).get(label)
                ratio = ours[figure] / theirs[figure] if ours and theirs and theirs[figure] else None
                entry[f"{edge}_over_{nginx_name}".replace("-", "_")] = ratio
        headline = entry["edge_over_nginx"]
        entry["met"] = None if headline is None else headline >= bar
        found[label] = entry
    return found


def summarize_many(runs: list[ManyRun]) -> dict[str, Any]:
    """Medians across rounds; the slowest response and the accept queue from the worst round; timeouts summed."""
    pct = [run.wrk.latency_percentiles_us for run in runs]
    return {
        "requests_per_s": median(run.wrk.requests_per_s for run in runs),
        "latency_p50_us": median(p.get("50", 0.0) for p in pct),
        "latency_p99_us": median(p.get("99", 0.0) for p in pct),
        "latency_max_us": max(run.wrk.latency_max_us or 0.0 for run in runs),
        "timeouts": sum(run.wrk.socket_errors.get("timeout", 0) for run in runs),
        "errors": sum(run.wrk.errors for run in runs),
        "accept_queue_most": max(run.queue_most for run in runs),
        "accept_queue_busy_until_s": max(run.queue_busy_until_s for run in runs),
        "rounds": [{**run.wrk.to_json(), "accept_queue_most": run.queue_most, "accept_queue_busy_until_s": run.queue_busy_until_s} for run in runs],
    }


def many_bars(many: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    edge, nginx = many.get(EDGE), many.get(HEADLINE)
    if edge is None or nginx is None:
        return None
    slowest_s = edge["latency_max_us"] / 1e6
    p99_ratio = edge["latency_p99_us"] / nginx["latency_p99_us"] if nginx["latency_p99_us"] else None
    return {
        "slowest_s": slowest_s, "timeouts": edge["timeouts"], "slowest_met": slowest_s <= BAR_SLOWEST_S and edge["timeouts"] == 0,
        "p99_over_nginx": p99_ratio, "p99_met": p99_ratio is not None and p99_ratio <= BAR_P99_OVER_NGINX,
    }  # fmt: skip


def access_log_check(results: Results) -> dict[str, Any]:
    """Per edge: lines written against requests sent. Every request is logged when
    lines >= wrk's + the checks, and at most the in-flight requests more."""
    found = {}
    for name, sent in results.sent.items():
        lines = results.access_lines.get(name)
        least = sent["wrk"] + sent.get("checks", 0)
        complete = None if lines is None or name == QUIET_EDGE else least <= lines <= least + sent["in_flight_at_most"]
        found[name] = {"lines": lines, **sent, "every_request_logged": complete}
    return found


def report(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    servers = {name: {label: summarize(samples) for label, samples in by_size.items()} for name, by_size in results.samples.items()}
    many = {name: summarize_many(runs) for name, runs in results.many.items()}
    return {
        "benchmark": "cache hits: chordcdn edge as a user runs it (memory tier, access log on) vs nginx proxy_cache, same origin, wrk on 127.0.0.1",
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": args.duration, "version": wrk_version()},
        "many": {"threads": args.many_threads, "connections": args.many_connections, "duration_s": args.many_duration, "timeout": MANY_TIMEOUT},
        "rounds": args.rounds,
        "origin": args.origin_cmd,
        "edge_root": str(args.edge_root or ROOT),
        "objects": {label: {"path": f"/{name}", "bytes": size} for label, (name, size) in OBJECTS.items()},
        "figures": "median across rounds; transfer in MiB/s as wrk counts it (headers and bodies); latency in microseconds",
        "servers": servers,
        "comparisons": comparisons(servers),
        "many_connections": many,
        "many_connections_bars": many_bars(many),
        "access_log": access_log_check(results),
        "warm_cache_statuses": results.warm_statuses,
        "not_hits_before_a_run": results.not_hits,
        "notes": results.notes,
        "process_exits": results.exits,
        "ports_left_listening": results.ports_left_listening,
        "environment": {
            "python": platform.python_version(),
            "nginx": nginx_version(shutil.which("nginx") or "nginx"),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
    }


def render_hits(data: dict[str, Any]) -> list[str]:
    w = data["wrk"]
    lines = [
        f"memory hits on 127.0.0.1, origin: {data['origin']}; wrk -t{w['threads']} -c{w['connections']} -d{w['duration_s']:g}s; "
        f"median of {data['rounds']} rounds",
        "",
        f"{'object':6} {'server':10} {'req/s':>10} {'MiB/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'wrk cpu':>8}",
    ]
    for label in OBJECTS:
        for name, by_size in data["servers"].items():
            s = by_size[label]
            if s is not None:
                lines.append(
                    f"{label:6} {name:10} {s['requests_per_s']:>10,.0f} {s['transfer_mib_per_s']:>9,.1f} "
                    f"{s['latency_p50_us'] or 0:>8.0f} {s['latency_p99_us'] or 0:>8.0f} {s['errors']:>7} {s['client_cpu'] or 0:>8.2f}"
                )
    lines.append(f"wrk cpu: wrk's CPU seconds per second; near {w['threads']} (its -t), the load generator, not the server, was the limit.")
    lines.append("")
    for label, c in data["comparisons"].items():
        unit = "req/s" if c["figure"] == "requests_per_s" else "MiB/s"
        ratio = c["edge_over_nginx"]
        verdict = "n/a (no edge)" if ratio is None else ("met" if c["met"] else "NOT met")
        others = [f"vs nginx auto {c['edge_over_nginx_auto']:.2f}"] if c["edge_over_nginx_auto"] is not None else []
        if c["edge_quiet_over_nginx"] is not None:
            others.append(f"edge-quiet (no access log) vs nginx {c['edge_quiet_over_nginx']:.2f}")
        shown = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(f"{label}: edge/nginx(1 worker) {unit} = {shown}; bar >= {c['bar']:.2f}: {verdict}" + (f"  ({'; '.join(others)})" if others else ""))
    return lines


def render_many(data: dict[str, Any]) -> list[str]:
    m = data["many"]
    if not data["many_connections"]:
        return []
    lines = [
        "",
        f"{m['connections']:,} keep-alive connections: wrk -t{m['threads']} -c{m['connections']} -d{m['duration_s']:g}s --latency "
        f"--timeout {m['timeout']} on /{OBJECTS[MANY_OBJECT][0]}; medians of {data['rounds']} rounds (max and accept queue: the worst round; timeouts: all rounds)",
        "",
        f"{'server':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'timeouts':>9} {'errors':>7} {'accept queue':>13} {'queued until':>13}",
    ]
    for name, s in data["many_connections"].items():
        lines.append(
            f"{name:10} {s['requests_per_s']:>9,.0f} {s['latency_p50_us'] / 1000:>8.1f} {s['latency_p99_us'] / 1000:>8.1f} "
            f"{s['latency_max_us'] / 1000:>8.1f} {s['timeouts']:>9} {s['errors']:>7} {s['accept_queue_most']:>13} {s['accept_queue_busy_until_s']:>12.1f}s"
        )
    bars = data["many_connections_bars"]
    if bars:
        ratio = "-" if bars["p99_over_nginx"] is None else f"{bars['p99_over_nginx']:.2f}"
        lines.append(
            f"edge: slowest response {bars['slowest_s']:.2f} s, {bars['timeouts']} timeouts; bar <= {BAR_SLOWEST_S:g} s and none: "
            f"{'met' if bars['slowest_met'] else 'NOT met'}; p99 / nginx's = {ratio}; bar <= {BAR_P99_OVER_NGINX:g}: {'met' if bars['p99_met'] else 'NOT met'}"
        )
    return lines


def render_checks(data: dict[str, Any]) -> list[str]:
    lines = [""]
    for name, a in data["access_log"].items():
        verdict = {True: "every request logged", False: "LINES MISSING OR EXTRA", None: "(no access log)"}[a["every_request_logged"]]
        lines.append(
            f"access log of {name}: {a['lines']:,} lines for {a['wrk']:,} requests wrk completed + {a.get('checks', 0)} checks "
            f"(+ at most {a['in_flight_at_most']:,} in flight when wrk stopped): {verdict}"
        )
    lines.extend(f"not a hit before a run: {entry}" for entry in data["not_hits_before_a_run"])
    errors = {f"{n} {label}": s["errors"] for n, by in data["servers"].items() for label, s in by.items() if s and s["errors"]}
    if errors:
        lines.append(f"wrk counted errors (non-2xx/3xx or socket errors): {errors}")
    lines.extend(data["notes"])
    unclean = {name: e for name, e in data["process_exits"].items() if e["code"] != 0 or e["killed"]}
    if data["origin"] == "stdlib" and unclean.get("origin", {}).get("code") == -15:
        del unclean["origin"]  # http.server's default on SIGTERM
    if unclean:
        lines.append(f"processes that did not exit cleanly after SIGTERM: {unclean}")
    if data["ports_left_listening"]:
        lines.append(f"WARNING: ports still listening after the run: {data['ports_left_listening']}")
    return lines


def render(data: dict[str, Any]) -> list[str]:
    return [*render_hits(data), *render_many(data), *render_checks(data)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_edge", description=__doc__.split("\n\n")[0])
    add_wrk_arguments(parser, "rounds over every server and object; the report takes the median")
    parser.set_defaults(threads=2)
    parser.add_argument("--many-connections", type=int, default=1000, metavar="N", help="connections of the many-connection runs (default 1000)")
    parser.add_argument("--many-threads", type=int, default=2, metavar="N", help="wrk threads of the many-connection runs (default 2)")
    parser.add_argument("--many-duration", type=float, default=10.0, metavar="S", help="seconds per many-connection run (default 10)")
    parser.add_argument("--no-many", dest="many", action="store_false", help="skip the many-connection runs")
    parser.add_argument("--no-hits", dest="hits", action="store_false", help="skip the memory-hit runs (only the many-connection ones)")
    parser.add_argument("--quiet-edge", action="store_true", help="also measure an edge with --log-level WARNING (no access log)")
    parser.add_argument("--edge-root", type=Path, metavar="DIR", help="run the edges from this checkout (python -m tools.cli there)")
    parser.add_argument("--origin-cmd", choices=("chordcdn", "stdlib"), default="chordcdn",
                        help="the origin: `chordcdn origin` (default) or Python's http.server as a stand-in (with Cache-Control)")  # fmt: skip
    parser.add_argument("--no-nginx-auto", dest="nginx_auto", action="store_false", help="skip nginx with worker_processes auto")
    parser.add_argument("--mem-cache", default="256MiB", metavar="SIZE", help="the edge's --mem-cache (default 256MiB)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the origin's --log-level (default WARNING); the edge runs with chordcdn's default")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--serve-stdlib-origin", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_stdlib_origin:
        serve_stdlib_origin(args.serve_stdlib_origin[0], int(args.serve_stdlib_origin[1]))
        return 0
    if args.connections < args.threads or args.many_connections < args.many_threads:
        build_parser().error("connections must be at least threads")
    results, code = run_interruptibly("bench_edge", lambda: run(args), (BenchError, OSError), "servers")
    if results is None:
        return code
    data = report(results, args)
    print("\n".join(render(data)))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if any(note.startswith("edge dropped") for note in data["notes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
