"""The edge's access log: one line per answered request, cheap enough to leave on.

Owns the lines and their format (plain text or JSON), the escaping of every value a
client or an upstream sent (so that no value can forge a line), the buffer and when it
is written. A request only leaves a row of its values in the buffer; rows become
lines a batch at a time, when the buffer holds `buffer_lines`, at most `interval`
seconds after a row was recorded, and when the log closes (SIGTERM and Ctrl-C close
it). The text goes to a regular file at once, and to anything else (a pipe, a
terminal) from a worker thread, so a slow reader never stalls the event loop; when
that writer falls `most_pending` lines behind, the requests that record wait for it
rather than drop lines. Also owns `logged`, which wraps an HTTP handler so that each
of its answers is recorded: the body bytes it sends (as nginx's `$body_bytes_sent`)
and the time it took, to the last byte of a streamed body.

The plain-text line (time in UTC to the millisecond, client address, request line,
status, body bytes sent, the edge's own Cache-Status entry, microseconds taken, as
Apache's `%D`, and User-Agent):

    2026-11-28T01:57:39.123Z 127.0.0.1:51234 "GET /a.bin HTTP/1.1" 200 1024 "e1; hit; detail=memory" 123 "curl/8.5.0"

`-` stands for a missing value. In quoted values `"` and `\\` are written `\\"` and
`\\\\`, and control characters and everything outside printable ASCII `\\xHH` (or
`\\uHHHH`). Status 0 means the handler gave no answer (the request body broke off,
or the edge stopped while answering). The JSON line has the same fields (`time`,
`client`, `method`, `target`, `protocol`, `status`, `bytes`, `cache`, `duration_us`,
`user_agent`; null for a missing value) and json's own escaping. Requests the
connection refuses before a handler sees them (malformed, over a limit) are not here:
the server logs them.

Through `logging` (a LogRecord, %-formatting, a handler lock and a flush per line) the
access log cost the edge 43% of its 1 KiB memory hits; this way a request pays about
1.3 µs for its row and 1 µs for its line (docs/benchmarks.md, issue 12).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
import sys
import threading
import time
from contextlib import asynccontextmanager, nullcontext
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import AsyncContextManager, AsyncIterable, AsyncIterator, Callable, ContextManager, Iterable, Iterator, TextIO

import trio

from .messages import BodyError, Handler, Request, Response, simple_response

log = logging.getLogger(__name__)

BUFFER_LINES = 512  # about 64 KiB of text
FLUSH_INTERVAL = 0.5
MOST_PENDING = 32 * 1024  # lines
FORMATS = ("text", "json")
BODILESS = frozenset({204, 304})  # statuses whose answers never carry a body (RFC 9110 §15.3.5, §15.4.5)
ACCESS_LOGGER = "chordcdn.access"  # the default destination is this logger's stream

_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')  # anything but printable ASCII without " and \


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` as it may stand between double quotes in a log line."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return _UNSAFE.sub(_escape_char, text)


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def timestamp(milliseconds: int) -> str:
    """ISO 8601 in UTC, to the millisecond, of a time in milliseconds since the epoch."""
    second, millisecond = divmod(milliseconds, 1000)
    return f"{_second(second)}.{millisecond:03d}Z"


Row = tuple[float, str, str, str, str, int, int, "str | None", int, "str | None"]
# what `AccessLog.record` keeps of a request: time, client, method, target, version,
# status, body bytes sent, Cache-Status entry, microseconds taken, User-Agent


def _stamped(rows: Iterable[Row]) -> Iterator[tuple[str, Row]]:
    """Each row with its time as text, made once per millisecond."""
    tick, stamp = -1, ""
    for row in rows:
        if int(row[0] * 1000) != tick:
            tick = int(row[0] * 1000)
            stamp = timestamp(tick)
        yield stamp, row


def text_lines(rows: Iterable[Row]) -> str:
    """Plain-text lines. What the client and upstreams sent is checked in one piece
    and escaped only when needed (the client's address and the HTTP version come
    from the server)."""
    lines = []
    for stamp, (_, client, method, target, version, status, sent, cache, micros, agent) in _stamped(rows):
        cache, agent = cache or "-", agent or "-"
        probe = method + target + cache + agent
        if not (probe.isascii() and probe.isprintable() and '"' not in probe and "\\" not in probe):
            method, target, cache, agent = escape(method), escape(target), escape(cache), escape(agent)
        lines.append(f'{stamp} {client or "-"} "{method} {target} HTTP/{version}" {status} {sent} "{cache}" {micros} "{agent}"\n')
    return "".join(lines)


def _json(text: str | None) -> str:
    return "null" if text is None else encode_basestring_ascii(text)


def json_lines(rows: Iterable[Row]) -> str:
    """JSON lines: one object each, every string through json's ASCII escaping."""
    return "".join([
        f'{{"time": "{stamp}", "client": {_json(client)}, "method": {_json(method)}, "target": {_json(target)}, '
        f'"protocol": "HTTP/{version}", "status": {status}, "bytes": {sent}, "cache": {_json(cache)}, '
        f'"duration_us": {micros}, "user_agent": {_json(agent)}}}\n'
        for stamp, (_, client, method, target, version, status, sent, cache, micros, agent) in _stamped(rows)
    ])  # fmt: skip


LINE_FORMATS: dict[str, Callable[[Iterable[Row]], str]] = {"text": text_lines, "json": json_lines}


# -- where the lines go -----------------------------------------------------------------------


class Sink:
    """A text stream the lines are written to and flushed, under a lock: a logging
    handler's own when they share its stream, so no line is cut by a log record.

    A regular file takes a batch from the page cache in tens of microseconds, less
    than handing it to a thread costs a busy event loop (the thread must take the
    GIL from it twice); anything else (a pipe, a terminal, a socket) can block for as
    long as its reader likes, so it `may_block` and is written from a thread."""

    def __init__(self, stream: TextIO, lock: ContextManager[object] | None = None, owned: bool = False) -> None:
        self.stream = stream
        self.lock = lock if lock is not None else threading.Lock()
        self.owned = owned
        self.may_block = not _regular_file(stream)

    def write(self, text: str) -> None:
        with self.lock:
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def _regular_file(stream: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def logger_sink(name: str = ACCESS_LOGGER) -> Sink | None:
    """The stream of the handler that would print the logger's INFO records (stderr
    under `chordcdn`'s logging set-up), or None when it would not print them."""
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(logging.INFO):
        return None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.level <= logging.INFO:
                return Sink(handler.stream, handler.lock)
        current = current.parent if current.propagate else None
    return Sink(sys.stderr)


def open_sink(where: str | None) -> Sink | None:
    """`--access-log`: None follows the access logger, "off" is no log, "-" standard
    output, anything else a file to append to (OSError when it cannot be opened)."""
    if where is None:
        return logger_sink()
    if where == "off":
        return None
    if where == "-":
        return Sink(sys.stdout)
    return Sink(open(where, "a", encoding="utf-8", errors="backslashreplace"), owned=True)


# -- the buffer ---------------------------------------------------------------------------------


class AccessLog:
    """Requests recorded on the event loop as rows of values; made into lines and
    written in batches by `run` (a task) and `close`."""

    def __init__(
        self, sink: Sink, line_format: str = "text", *, buffer_lines: int = BUFFER_LINES, interval: float = FLUSH_INTERVAL,
        most_pending: int = MOST_PENDING,
    ) -> None:
        self.sink = sink
        self.lines = LINE_FORMATS[line_format]
        self.buffer_lines = buffer_lines
        self.interval = interval
        self.most_pending = max(most_pending, buffer_lines)
        self._pending: list[Row] = []
        self._full = trio.Event()
        self._room = trio.Event()
        self.lost = 0  # lines the sink refused (logged as errors)
        self.closed = False

    def record(
        self, client: str, method: str, target: str, version: str, status: int, sent: int, cache: str | None,
        micros: int, agent: str | None,
    ) -> None:
        """One request's values, kept as they are: the line is made with its batch."""
        row = (time.time(), client, method, target, version, status, sent, cache, micros, agent)
        if self.closed:
            self._write(self.lines([row]))
            return
        pending = self._pending
        pending.append(row)
        if len(pending) >= self.buffer_lines:
            self._full.set()

    @property
    def backlogged(self) -> bool:
        """Whether recorders should `wait_for_room` before going on."""
        return len(self._pending) >= self.most_pending

    async def wait_for_room(self) -> None:
        while self.backlogged and not self.closed:
            await self._room.wait()

    async def run(self) -> None:
        """Write the buffer whenever it fills, and at least every `interval` seconds."""
        while True:
            with trio.move_on_after(self.interval):
                await self._full.wait()
            text = self._take()
            if text and self.sink.may_block:
                await trio.to_thread.run_sync(self._write, text)  # not abandoned on cancel: the lines go out in order
            elif text:
                self._write(text)

    def close(self) -> None:
        """Write what is left, synchronously, and close the sink. Lines recorded later
        are written one by one."""
        if self.closed:
            return
        self.closed = True
        text = self._take()
        if text:
            self._write(text)
        self.sink.close()

    def _take(self) -> str:
        """The pending rows as lines; the buffer is empty again."""
        rows, self._pending = self._pending, []
        if self._full.is_set():
            self._full = trio.Event()
        self._room.set()
        self._room = trio.Event()
        return self.lines(rows)

    def _write(self, text: str) -> None:
        try:
            self.sink.write(text)
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            lines = text.count("\n")
            self.lost += lines
            log.error("access log: %d lines could not be written: %s", lines, exc)


@asynccontextmanager
async def _running(access: AccessLog) -> AsyncIterator[AccessLog]:
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(access.run)
            try:
                yield access
            finally:
                nursery.cancel_scope.cancel()
    finally:
        access.close()


def running(access: AccessLog | None) -> AsyncContextManager[AccessLog | None]:
    """Run the log's writer for the block, then close the log: enter it outside the
    server's nursery, so that every request's line is recorded before the close."""
    return nullcontext() if access is None else _running(access)


# -- recording a handler's answers --------------------------------------------------------------


def cache_entry(headers: list[tuple[str, str]]) -> str | None:
    """The last Cache-Status field line: the entry of the cache that answered (RFC 9211)."""
    if headers and headers[-1][0] == "Cache-Status":  # where the edge puts its own
        return headers[-1][1]
    for name, value in reversed(headers):
        if name.lower() == "cache-status":
            return value
    return None


class CountedBody:
    """A streamed body that counts what the server takes from it and calls `done`
    with that count once: when the server closes it, or when it is dropped unclosed."""

    __slots__ = ("body", "done", "sent", "_chunks")

    def __init__(self, body: AsyncIterable[bytes], done: Callable[[int], None] | None) -> None:
        self.body = body
        self.done = done
        self.sent = 0
        self._chunks: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> CountedBody:
        self._chunks = self.body.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        assert self._chunks is not None
        chunk = await self._chunks.__anext__()
        self.sent += len(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            aclose = getattr(self.body, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(self.sent)

    def __del__(self) -> None:
        self._finish()


def _micros_since(started: int) -> int:
    return (time.perf_counter_ns() - started) // 1000


def logged(handler: Handler, access: AccessLog) -> Handler:
    """`handler`, recording one line per request in `access`."""

    async def handle(request: Request) -> Response:
        started = time.perf_counter_ns()
        try:
            response = await handler(request)
        except BaseException as exc:
            _record_failure(access, request, exc, _micros_since(started))
            raise
        micros = (time.perf_counter_ns() - started) // 1000
        body, status = response.body, response.status
        if not isinstance(body, (bytes, bytearray, memoryview)):
            return _counted(access, request, response, body, started)
        sent = 0 if request.method == "HEAD" or status < 200 or status in BODILESS else len(body)
        agent = request.headers.get("user-agent")
        access.record(request.client, request.method, request.target, request.version, status, sent, cache_entry(response.headers), micros, agent)
        if access.backlogged:
            await access.wait_for_room()
        return response

    return handle


def _counted(access: AccessLog, request: Request, response: Response, body: AsyncIterable[bytes], started: int) -> Response:
    """The response with its streamed body counted; the line is recorded when it ends."""

    def done(sent: int) -> None:
        access.record(
            request.client, request.method, request.target, request.version, response.status, sent,
            cache_entry(response.headers), _micros_since(started), request.headers.get("user-agent"),
        )  # fmt: skip

    return Response(response.status, response.headers, CountedBody(body, done))


def _record_failure(access: AccessLog, request: Request, exc: BaseException, micros: int) -> None:
    """A handler that raised: the server answers 500, except when the request body
    broke off or the handler was cancelled (as at shutdown): no answer, status 0."""
    answered = isinstance(exc, Exception) and not isinstance(exc, BodyError)
    status, sent = (500, len(simple_response(500).body)) if answered else (0, 0)
    access.record(
        request.client, request.method, request.target, request.version, status, sent, None, micros,
        request.headers.get("user-agent"),
    )  # fmt: skip
