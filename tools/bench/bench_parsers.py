"""Which HTTP/1.1 parser for the edge: h11 against httptools, each in a bare trio server.

What it measures: two minimal keep-alive servers on raw trio streams (`trio.serve_tcp`),
identical but for the parser, each answering every GET with the same fixed 1 KiB body
(same status line and headers, correct Content-Length), loaded by wrk:
- h11: `h11.Connection(h11.SERVER)`, events read until NEED_DATA, `start_next_cycle`
  after each response.
- httptools: `httptools.HttpRequestParser` with callbacks collecting the URL and
  headers; `on_message_complete` queues a response.
Both send the responses to every request found in one read with one `send_all`, so
pipelined requests are answered in order; a request that does not keep the
connection alive (HTTP/1.0, `Connection: close`) gets its response and then the close.

How: each server runs in a child process (`--serve KIND`) on 127.0.0.1 port 0 and prints
the port; both are checked first (plain, pipelined, split across writes, HEAD, close);
then wrk loads them in turn, round by round, so slow spells of the shared machine hit
both. The report gives the median across rounds of req/s and latency, and the ratio
httptools/h11.

    python -m tools.bench.bench_parsers [--rounds 3] [--duration 5] [--threads 1] [--connections 32] [--json PATH]

Needs wrk (Debian: `apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import signal
import socket
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import h11
import httptools
import trio

from tools.bench.common import run_interruptibly
from tools.bench.httpbench import BenchError, add_wrk_arguments, child_process, find_wrk, run_wrk, summarize, wrk_version

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("h11", "httptools")
BODY = bytes(range(256)) * 4  # 1 KiB
CONTENT_TYPE = b"application/octet-stream"
RECEIVE_SIZE = 65536
READY = re.compile(r"(\S+) listening on 127\.0\.0\.1:([0-9]+)")
SERVER_LIFETIME = 3600.0  # a server exits by itself after this, should we die without stopping it


def response_head(status: int, reason: bytes, length: int, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (status, reason, CONTENT_TYPE, length, connection)


# The httptools server's responses, by (method, whether the connection then closes).
# The h11 server builds the same status lines and headers through h11.
OK_HEAD = response_head(200, b"OK", len(BODY))
OK = OK_HEAD + BODY
RESPONSES = {
    (method, close): response_head(*status, close) + (BODY if method == b"GET" else b"")
    for method, status in ((b"GET", (200, b"OK", len(BODY))), (b"HEAD", (200, b"OK", len(BODY))), (b"", (405, b"Method Not Allowed", 0)))
    for close in (False, True)
}
BAD_REQUEST = response_head(400, b"Bad Request", 0, close=True)


# -- the h11 server ---------------------------------------------------------------------


async def serve_h11(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    out: list[bytes] = []
    method = b""
    try:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                out.append(BAD_REQUEST)
                break
            if event is h11.NEED_DATA:
                if out:
                    await stream.send_all(b"".join(out))
                    out.clear()
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                method = event.method
            elif isinstance(event, h11.EndOfMessage):
                if method in (b"GET", b"HEAD"):
                    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(BODY))]
                    out.append(conn.send(h11.Response(status_code=200, reason=b"OK", headers=headers)))
                    if method == b"GET":
                        out.append(conn.send(h11.Data(data=BODY)))
                else:
                    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"0")]
                    out.append(conn.send(h11.Response(status_code=405, reason=b"Method Not Allowed", headers=headers)))
                out.append(conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # MUST_CLOSE: the request did not keep the connection alive
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
            # h11.Data (a request body) is read and ignored
        if out:
            await stream.send_all(b"".join(out))
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


# -- the httptools server ------------------------------------------------------------------


class HttptoolsRequests:
    """Parser callbacks: collect each request's URL and headers; queue its response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []
        self.closing = False  # a request that does not keep the connection alive was answered

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        if self.closing:
            return  # pipelined after a Connection: close: not answered
        method = self.parser.get_method()
        self.closing = not self.parser.should_keep_alive()
        self.out.append(RESPONSES[method if method in (b"GET", b"HEAD") else b"", self.closing])

    def feed(self, data: bytes) -> bytes:
        """Parse what arrived; return the responses to send (every complete request's)."""
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # no upgrades here
            if not self.closing:  # llhttp also refuses data after a request that closes
                self.out.append(BAD_REQUEST)
                self.closing = True
        out = b"".join(self.out)
        self.out.clear()
        return out


async def serve_httptools(stream: trio.SocketStream) -> None:
    requests = HttptoolsRequests()
    try:
        while not requests.closing:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                break
            out = requests.feed(data)
            if out:
                await stream.send_all(out)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


HANDLERS: dict[str, Callable[[trio.SocketStream], Awaitable[None]]] = {"h11": serve_h11, "httptools": serve_httptools}


async def serve(kind: str, lifetime: float) -> None:
    """The server process: listen on a free loopback port, print it, serve until SIGTERM
    or SIGINT (caught here, so it works even where SIGINT was ignored at start)."""
    with trio.move_on_after(lifetime), trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, HANDLERS[kind], 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            print(f"{kind} listening on 127.0.0.1:{port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


# -- checking a server before loading it ---------------------------------------------------------


def exchange(port: int, writes: Sequence[bytes], expect: int) -> bytes:
    """Send the writes (separately), read until `expect` bytes or the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for data in writes:
            sock.sendall(data)
        got = b""
        while len(got) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def check_server(kind: str, port: int) -> None:
    """The cases a correct keep-alive server must get right; raise BenchError if one fails."""
    get = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    close = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    cases: list[tuple[str, list[bytes], bytes, bool]] = [  # name, writes, expected reply, server closes after
        ("one GET", [get], OK, False),
        ("POST", [b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + get], RESPONSES[b"", False] + OK, False),
        ("three pipelined GETs in one write", [get * 3], OK * 3, False),
        ("a GET split across writes", [get[:7], get[7:20], get[20:]], OK, False),
        ("HEAD then GET pipelined", [get.replace(b"GET", b"HEAD") + get], OK_HEAD + OK, False),
        ("GET, then Connection: close, then a GET not answered", [get + close + get], OK + RESPONSES[b"GET", True], True),
        ("HTTP/1.0 GET", [b"GET /x HTTP/1.0\r\n\r\n"], RESPONSES[b"GET", True], True),
    ]
    for name, writes, expected, closes in cases:
        got = exchange(port, writes, len(expected) + (1 if closes else 0))
        if normalize(got) != normalize(expected):
            raise BenchError(f"{kind} server fails the check '{name}': expected {expected[:200]!r}..., got {got[:200]!r}...")


def normalize(replies: bytes) -> list[tuple[bytes, frozenset[bytes], bytes]]:
    """Split a byte stream of responses into (status line, header set, body): h11 may
    order or spell headers its own way. A HEAD response is told by its missing body."""
    parsed = []
    rest = replies
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0]
        headers = frozenset(line.lower().replace(b": ", b":") for line in lines[1:])
        length = next(int(line.split(b":")[1]) for line in lines[1:] if line.lower().startswith(b"content-length"))
        is_head = length == len(BODY) and not rest.startswith(BODY)
        body, rest = (b"", rest) if is_head else (rest[:length], rest[length:])
        parsed.append((status, headers, body))
    return parsed


# -- the run ---------------------------------------------------------------------------------------


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk = find_wrk()
    results: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    exits: dict[str, Any] = {}
    ports: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-parsers-") as tmp, contextlib.ExitStack() as stack:
        for kind in KINDS:
            argv = [sys.executable, "-m", "tools.bench.bench_parsers", "--serve", kind]
            child = stack.enter_context(child_process(argv, f"{kind} server", log_dir=Path(tmp), cwd=ROOT, exits=exits))
            ports[kind] = int(child.wait_for_line(READY).group(2))
            check_server(kind, ports[kind])
        progress("servers: " + ", ".join(f"{kind} on 127.0.0.1:{port}" for kind, port in ports.items()) + "; both pass the checks")
        for round_no in range(1, args.rounds + 1):
            for kind in KINDS if round_no % 2 else reversed(KINDS):
                result = run_wrk(
                    f"http://127.0.0.1:{ports[kind]}/obj", threads=args.threads, connections=args.connections, duration=args.duration, wrk=wrk
                )
                results[kind].append(result)
                errors = f"  errors {result.errors}" if result.errors else ""
                progress(
                    f"round {round_no} {kind:9} {result.requests_per_s:10,.0f} req/s  "
                    f"p50 {result.latency_percentiles_us.get('50', 0):7.0f} us  p99 {result.latency_percentiles_us.get('99', 0):7.0f} us{errors}"
                )
    summaries = {kind: summarize(results[kind]) for kind in KINDS}
    h11_rps, ht_rps = (summaries[k]["requests_per_s"] for k in KINDS)  # type: ignore[index]
    return {
        "benchmark": "bare trio HTTP/1.1 keep-alive servers, fixed 1 KiB body, loaded by wrk on 127.0.0.1",
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": args.duration, "version": wrk_version(wrk)},
        "rounds": args.rounds,
        "figures": "median across rounds; latency in microseconds",
        "h11": summaries["h11"],
        "httptools": summaries["httptools"],
        "ratio_httptools_over_h11_requests_per_s": ht_rps / h11_rps if h11_rps else None,
        "server_exits": exits,
        "environment": {
            "python": platform.python_version(),
            "trio": trio.__version__,
            "h11": h11.__version__,
            "httptools": metadata.version("httptools"),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
    }


def render(data: dict[str, Any]) -> list[str]:
    w = data["wrk"]
    lines = [
        f"bare trio HTTP servers, 1 KiB body; wrk -t{w['threads']} -c{w['connections']} -d{w['duration_s']:g}s; median of {data['rounds']} rounds",
        "",
        f"{'parser':10} {'req/s':>10} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'wrk cpu':>8}",
    ]
    for kind in KINDS:
        s = data[kind]
        lines.append(
            f"{kind:10} {s['requests_per_s']:>10,.0f} {s['latency_p50_us'] or 0:>8.0f} {s['latency_p99_us'] or 0:>8.0f} {s['errors']:>7} {s['client_cpu'] or 0:>8.2f}"
        )
    lines.append(f"httptools/h11: {data['ratio_httptools_over_h11_requests_per_s']:.2f}x req/s")
    lines.append(f"wrk cpu: wrk's CPU seconds per second; near {w['threads']} (its -t), the load generator, not the server, was the limit.")
    unclean = {name: e for name, e in data["server_exits"].items() if e["code"] != 0 or e["killed"]}
    if unclean:
        lines.append(f"servers that did not exit cleanly after SIGTERM: {unclean}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_parsers", description=__doc__.split("\n\n")[0])
    add_wrk_arguments(parser, "wrk runs per server; the report takes the median")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve:
        trio.run(serve, args.serve, SERVER_LIFETIME)
        return 0
    if args.connections < args.threads:
        build_parser().error("--connections must be at least --threads")
    data, code = run_interruptibly("bench_parsers", lambda: run(args), (BenchError, OSError), "servers")
    if data is None:
        return code
    print("\n".join(render(data)))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
