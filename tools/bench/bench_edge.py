"""The edge serving memory hits, against nginx as a caching reverse proxy of the same origin.

What it measures: wrk against `chordcdn edge` and against nginx (Debian's package,
`proxy_cache` on a cache directory), both in front of the same origin and both
serving cache hits, in the same run: a 1 KiB object (req/s) and a 1 MiB object
(MiB/s). nginx runs twice, with `worker_processes 1` (the headline: the edge is one
process) and with `worker_processes auto` (one worker per core).

The bars (the issue's): for 1 KiB, edge req/s >= 30% of nginx's; for 1 MiB, edge
MiB/s >= 75% of nginx's, both against nginx with one worker.

How:
- The origin serves a generated directory with small.bin (1 KiB) and large.bin
  (1 MiB): `chordcdn origin --root DIR --listen 127.0.0.1:PORT --cache-control
  "/=public, max-age=86400"` (its default max-age=60 would let entries expire during
  the run), or with `--origin-cmd stdlib` Python's `http.server` in its place,
  sending the same Cache-Control.
- nginx gets a generated config in a temporary directory (`daemon off`, pid, logs,
  temp and cache paths there; `proxy_cache_valid 200 10m`; `X-Cache-Status` header).
- The edge: `chordcdn edge --listen 127.0.0.1:PORT --name e1 --origin URL --mem-cache 256MiB`.
  If `chordcdn edge --help` fails, the edge is skipped with a message.
- Every server listens on a loopback port picked here; it is ready once it answers HTTP.
- Each cache is warmed (GETs until a response is a hit; the response after must be
  one too: nginx's `X-Cache-Status: HIT`, our `Cache-Status` containing "hit"), and
  every body is checked against the file. Before each wrk run the object is fetched
  once more and must still be a hit.
- wrk runs per round over every size and server, the order rotating per round so
  slow spells of the shared machine hit all; the report gives medians across rounds.
  wrk's Transfer/sec counts headers and bodies, in binary units (its "MB" is MiB).

    python -m tools.bench.bench_edge [--rounds 3] [--duration 5] [--threads 1] [--connections 32]
        [--origin-cmd chordcdn|stdlib] [--no-nginx-auto] [--json PATH]

Needs wrk and nginx (Debian: `apt-get install -y wrk nginx`). Every child process gets
SIGTERM at the end, on error too, and the ports are checked to be free again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tools.bench.common import run_interruptibly
from tools.bench.httpbench import (
    add_wrk_arguments,
    BenchError,
    Child,
    WrkResult,
    child_process,
    find_wrk,
    free_port,
    http_get,
    is_listening,
    run_wrk,
    summarize,
    wrk_version,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
OBJECTS = {"1KiB": ("small.bin", 1024), "1MiB": ("large.bin", 1024 * 1024)}  # size label -> (file, bytes)
BARS = {"1KiB": ("requests_per_s", 0.30), "1MiB": ("transfer_mib_per_s", 0.75)}  # size label -> (figure, edge/nginx at least)
HEADLINE = "nginx"  # the nginx with one worker
ORIGIN_CACHE_CONTROL = "/=public, max-age=86400"  # our origin's default max-age=60 would expire entries mid-run
WARM_TRIES = 5
NGINX_MISSING = "nginx is not installed: install it with `apt-get install -y nginx` (Debian's package) and run again"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """A cache under test: where it listens and how it says a response was a hit."""

    name: str
    port: int
    cache_header: str
    is_hit: Callable[[str], bool]
    child: Child


def nginx_hit(value: str) -> bool:
    return value.strip().upper() == "HIT"


def edge_hit(value: str) -> bool:
    return "hit" in value.lower()


def chordcdn_command() -> list[str]:
    """The chordcdn console script beside this Python (the project's .venv), else the module."""
    script = Path(sys.executable).parent / "chordcdn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tools.cli"]


def subcommand_missing(command: Sequence[str], subcommand: str) -> str | None:
    """Why `chordcdn SUBCOMMAND --help` fails, or None if it works."""
    try:
        done = subprocess.run([*command, subcommand, "--help"], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{' '.join([*command, subcommand, '--help'])}` could not run: {exc}"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return f"`{' '.join([*command, subcommand, '--help'])}` exited with code {done.returncode}" + (f": {said[-1]}" if said else "")
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


def edge_argv(command: Sequence[str], log_level: str, port: int, origin_port: int, mem_cache: str) -> list[str]:
    return [
        *command, "--log-level", log_level, "edge",
        "--listen", f"{HOST}:{port}", "--name", "e1", "--origin", f"http://{HOST}:{origin_port}", "--mem-cache", mem_cache,
    ]  # fmt: skip


def nginx_config(directory: Path, port: int, origin_port: int, workers: str) -> str:
    """A caching reverse proxy of the origin, with every path inside `directory`."""
    d = directory
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
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
    tcp_nopush on;
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


# -- warming and checking hits ------------------------------------------------------------------------


def fetch_checked(server: Server, path: str, expected: bytes) -> str:
    """GET path; check status and body; return the cache-status header's value."""
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


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[str, dict[str, list[WrkResult]]]  # server -> size label -> rounds
    warm_statuses: dict[str, dict[str, list[str]]]
    not_hits: list[str]  # "server path status" for a pre-run check that was not a hit
    notes: list[str]
    exits: dict[str, Any]
    ports_left_listening: list[int]


def run(args: argparse.Namespace) -> Results:
    wrk = find_wrk()
    nginx = shutil.which("nginx")
    if nginx is None:
        raise BenchError(NGINX_MISSING)
    command = chordcdn_command()
    notes: list[str] = []
    if args.origin_cmd == "chordcdn":
        why = subcommand_missing(command, "origin")
        if why:
            raise BenchError(f"our origin cannot run ({why}); use --origin-cmd stdlib for Python's http.server instead")
    edge_missing = subcommand_missing(command, "edge")
    if edge_missing:
        notes.append(f"edge skipped: {edge_missing}")
        progress(f"bench_edge: the edge is skipped: {edge_missing}")
    results = Results({}, {}, [], notes, {}, [])
    ports: list[int] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp, contextlib.ExitStack() as stack:
            base = Path(tmp)
            contents = make_site(base / "site")
            origin_port = free_port(HOST)
            ports.append(origin_port)
            origin_cmd = origin_argv(args.origin_cmd, command, args.log_level, base / "site", origin_port)
            origin = stack.enter_context(child_process(origin_cmd, "origin", log_dir=base, cwd=ROOT, exits=results.exits))
            origin.wait_for_http(HOST, origin_port, "/small.bin")
            for path, expected in contents.items():
                reply = http_get(HOST, origin_port, path)
                if reply.status != 200 or reply.body != expected:
                    raise BenchError(f"origin: GET {path} answered {reply.status} with {len(reply.body)} bytes, not the file")
            servers = [stack.enter_context(running_nginx(nginx, base, HEADLINE, "1", origin_port, results.exits))]
            if args.nginx_auto:
                servers.append(stack.enter_context(running_nginx(nginx, base, "nginx-auto", "auto", origin_port, results.exits)))
            if not edge_missing:
                edge_port = free_port(HOST)
                argv = edge_argv(command, args.log_level, edge_port, origin_port, args.mem_cache)
                edge = stack.enter_context(child_process(argv, "edge", log_dir=base, cwd=ROOT, exits=results.exits))
                edge.wait_for_http(HOST, edge_port, "/small.bin")
                servers.append(Server("edge", edge_port, "cache-status", edge_hit, edge))
            ports.extend(server.port for server in servers)
            for server in list(servers):
                try:
                    results.warm_statuses[server.name] = warm(server, contents)
                except BenchError as exc:
                    if server.name != "edge":
                        raise
                    notes.append(f"edge dropped: {exc}")  # nginx is still measured
                    progress(f"bench_edge: the edge is dropped: {exc}")
                    servers.remove(server)
                    continue
                results.samples[server.name] = {label: [] for label in OBJECTS}
            progress(f"origin ({args.origin_cmd}) on {HOST}:{origin_port}; " + ", ".join(f"{s.name} on {HOST}:{s.port}" for s in servers) + "; caches warm")
            for round_no in range(1, args.rounds + 1):
                shift = (round_no - 1) % len(servers)
                order = servers[shift:] + servers[:shift]
                for label, (name, _) in OBJECTS.items():
                    for server in order:
                        server.child.check_alive()
                        status = fetch_checked(server, f"/{name}", contents[f"/{name}"])
                        if not server.is_hit(status):
                            results.not_hits.append(f"round {round_no} {server.name} /{name}: {server.cache_header}: {status!r}")
                        result = run_wrk(
                            f"http://{HOST}:{server.port}/{name}",
                            threads=args.threads, connections=args.connections, duration=args.duration, wrk=wrk,
                        )  # fmt: skip
                        results.samples[server.name][label].append(result)
                        errors = f"  ERRORS {result.errors}" if result.errors else ""
                        progress(
                            f"round {round_no} {label:4} {server.name:10} {result.requests_per_s:10,.0f} req/s "
                            f"{result.transfer_mib_per_s:9,.1f} MiB/s  p50 {result.latency_percentiles_us.get('50', 0):7.0f} us  "
                            f"p99 {result.latency_percentiles_us.get('99', 0):7.0f} us  wrk cpu {result.client_cpu or 0:4.2f}{errors}"
                        )
            for server in servers:
                server.child.check_alive()
    finally:
        time.sleep(0.2)
        results.ports_left_listening = [port for port in ports if is_listening(HOST, port)]
        if results.ports_left_listening:
            progress(f"bench_edge: WARNING: still listening after the run: {results.ports_left_listening}")
    return results


# -- the report ---------------------------------------------------------------------------------------


def report(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    servers = {name: {label: summarize(samples) for label, samples in by_size.items()} for name, by_size in results.samples.items()}
    comparisons: dict[str, Any] = {}
    edge = servers.get("edge")
    for label, (figure, bar) in BARS.items():
        entry: dict[str, Any] = {"figure": figure, "bar": bar}
        for nginx_name in ("nginx", "nginx-auto"):
            theirs = servers.get(nginx_name, {}).get(label)
            ours = edge.get(label) if edge else None
            ratio = ours[figure] / theirs[figure] if ours and theirs and theirs[figure] else None
            entry[f"edge_over_{nginx_name.replace('-', '_')}"] = ratio
        headline = entry["edge_over_nginx"]
        entry["met"] = None if headline is None else headline >= bar
        comparisons[label] = entry
    wrk = find_wrk()
    return {
        "benchmark": "cache hits: chordcdn edge (memory tier) vs nginx proxy_cache, same origin, wrk on 127.0.0.1",
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": args.duration, "version": wrk_version(wrk)},
        "rounds": args.rounds,
        "origin": args.origin_cmd,
        "objects": {label: {"path": f"/{name}", "bytes": size} for label, (name, size) in OBJECTS.items()},
        "figures": "median across rounds; transfer in MiB/s as wrk counts it (headers and bodies); latency in microseconds",
        "servers": servers,
        "comparisons": comparisons,
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


def render(data: dict[str, Any]) -> list[str]:
    w = data["wrk"]
    lines = [
        f"cache hits on 127.0.0.1, origin: {data['origin']}; wrk -t{w['threads']} -c{w['connections']} -d{w['duration_s']:g}s; "
        f"median of {data['rounds']} rounds",
        "",
        f"{'object':6} {'server':10} {'req/s':>10} {'MiB/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'wrk cpu':>8}",
    ]
    for label in OBJECTS:
        for name, by_size in data["servers"].items():
            s = by_size[label]
            if s is None:
                continue
            lines.append(
                f"{label:6} {name:10} {s['requests_per_s']:>10,.0f} {s['transfer_mib_per_s']:>9,.1f} "
                f"{s['latency_p50_us'] or 0:>8.0f} {s['latency_p99_us'] or 0:>8.0f} {s['errors']:>7} {s['client_cpu'] or 0:>8.2f}"
            )
    lines.append(f"wrk cpu: wrk's CPU seconds per second; near {w['threads']} (its -t), the load generator, not the server, was the limit.")
    lines.append("")
    for label, c in data["comparisons"].items():
        unit = "req/s" if c["figure"] == "requests_per_s" else "MiB/s"
        ratio = c["edge_over_nginx"]
        auto = c["edge_over_nginx_auto"]
        verdict = "n/a (no edge)" if ratio is None else ("met" if c["met"] else "NOT met")
        shown = "-" if ratio is None else f"{ratio:.2f}"
        also = "" if auto is None else f"  (vs nginx auto: {auto:.2f})"
        lines.append(f"{label}: edge/nginx(1 worker) {unit} = {shown}; bar >= {c['bar']:.2f}: {verdict}{also}")
    for entry in data["not_hits_before_a_run"]:
        lines.append(f"not a hit before a run: {entry}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_edge", description=__doc__.split("\n\n")[0])
    add_wrk_arguments(parser, "wrk runs per server and object; the report takes the median")
    parser.add_argument("--origin-cmd", choices=("chordcdn", "stdlib"), default="chordcdn",
                        help="the origin: `chordcdn origin` (default) or Python's http.server as a stand-in (with Cache-Control)")  # fmt: skip
    parser.add_argument("--no-nginx-auto", dest="nginx_auto", action="store_false", help="skip nginx with worker_processes auto")
    parser.add_argument("--mem-cache", default="256MiB", metavar="SIZE", help="the edge's --mem-cache (default 256MiB)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="chordcdn's --log-level for origin and edge (default WARNING: INFO logs every request)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--serve-stdlib-origin", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_stdlib_origin:
        serve_stdlib_origin(args.serve_stdlib_origin[0], int(args.serve_stdlib_origin[1]))
        return 0
    if args.connections < args.threads:
        build_parser().error("--connections must be at least --threads")
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
