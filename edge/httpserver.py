"""An HTTP/1.1 server on trio, shared by the edge and the origin.

Owns the connection: parsing requests with httptools, keep-alive and pipelining
(responses go out in request order, one request at a time per connection), the
limits that protect a server from its clients (header size → 431, body size → 413,
a deadline for the whole header block and an idle deadline between requests), and
framing responses (Content-Length, or chunked for streamed bodies of unknown
length). What to answer is the handler's business: it gets a `Request` and returns
a `Response`, whose body is bytes or an async iterable of bytes.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import AsyncIterable, Awaitable, Callable, Iterable, KeysView
from urllib.parse import unquote

import httptools
import trio

from dht.streams import SocketChannel

from .policy import first_value

log = logging.getLogger(__name__)

READ_SIZE = 65536
NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class Limits:
    """What a client may send. Sizes in bytes, timeouts in seconds."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0


class Headers:
    """Request header fields in arrival order; names are matched case-insensitively."""

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = [(name.lower(), value) for name, value in fields]
        self._index: dict[str, list[str]] = {}
        for name, value in self._fields:
            self._index.setdefault(name, []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """One field's value; repeated fields are joined with ", " (RFC 9110 §5.3)."""
        values = self._index.get(name.lower())
        if values is None:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def names(self) -> KeysView[str]:
        """The lower-cased names present (a set-like view, for quick membership tests)."""
        return self._index.keys()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass
class Request:
    method: str
    target: str
    headers: Headers
    body: bytes = b""
    version: str = "1.1"
    client: str = ""
    # Sends an interim (1xx) response ahead of the final one, while the request is
    # being handled; None when the client cannot take one (HTTP/1.0).
    interim: Callable[[int, list[tuple[str, str]]], Awaitable[None]] | None = None

    @functools.cached_property
    def path(self) -> str:
        """The percent-decoded path, without the query."""
        return unquote(self.target.split("?", 1)[0])

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


Body = bytes | AsyncIterable[bytes]


@dataclass
class Response:
    """A response. Content-Length is added for a bytes body unless the handler set it
    (a HEAD answer sets the length of the body it leaves out); a streamed body with no
    Content-Length goes out chunked."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""

    def header(self, name: str) -> str | None:
        return first_value(self.headers, name)


Handler = Callable[[Request], Awaitable[Response]]


def simple_response(status: int, text: str = "", headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A short text/plain response, e.g. for errors."""
    body = (text or HTTPStatus(status).phrase).encode() + b"\n"
    return Response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], body)


class _ClientError(Exception):
    """The client broke the protocol; answer with `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _ExtensionMethod(Exception):
    """llhttp did not know the request's method."""


_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


class _Parser:
    """httptools callbacks collecting whole requests, with the size limits enforced
    as bytes arrive."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[tuple[Request, bool]] = []
        self.in_headers = False
        self._open_message = False  # between a message's first byte and its end
        self._method: str | None = None  # an extension method llhttp could not take
        self.continue_wanted = False  # a client waits for "100 Continue" before its body
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0

    def feed(self, data: bytes) -> None:
        fresh, completed = not self._open_message, len(self.ready)
        try:
            self._feed(data)
        except _ExtensionMethod:
            if not fresh or len(self.ready) != completed:
                raise _ClientError(400, "an extension method must start a read of its own") from None
            self._feed_extension_method(data)

    def _feed_extension_method(self, data: bytes) -> None:
        """llhttp knows only registered methods; any other token is a valid method
        (RFC 9110 §9.1) that a proxy passes on. Parse the request under a stand-in
        method and give it back its own."""
        method, space, rest = data.partition(b" ")
        if not space or not _TOKEN.fullmatch(method):
            raise _ClientError(400, f"malformed request method {method[:40]!r}")
        self.parser = httptools.HttpRequestParser(self)  # the old one stopped at the error
        self._method = method.decode("ascii")
        try:
            self._feed(b"PUT " + rest)
        except _ExtensionMethod:
            raise _ClientError(400, "malformed request after an extension method") from None

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            raise _ExtensionMethod() from None
        except httptools.HttpParserUpgrade:
            raise _ClientError(400, "protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _ClientError):
                raise exc.__context__ from None
            raise _ClientError(400, f"malformed request: {exc}") from None

    def _count_header_bytes(self, amount: int) -> None:
        self._header_bytes += amount
        if self._header_bytes > self.limits.max_header_bytes:
            raise _ClientError(431, f"request header block exceeds {self.limits.max_header_bytes} bytes")

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_headers = True
        self._open_message = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.continue_wanted = any(name.lower() == "expect" and value.strip().lower() == "100-continue" for name, value in self._fields)

    def on_body(self, chunk: bytes) -> None:
        self._body_bytes += len(chunk)
        if self._body_bytes > self.limits.max_body_bytes:
            raise _ClientError(413, f"request body exceeds {self.limits.max_body_bytes} bytes")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        parser = self.parser
        self._open_message = False
        method, self._method = self._method or parser.get_method().decode("ascii", "replace"), None
        request = Request(
            method=method,
            target=self._url.decode("latin-1"),
            headers=Headers(self._fields),
            body=b"".join(self._body),
            version=parser.get_http_version(),
        )
        self.ready.append((request, parser.should_keep_alive()))


@functools.lru_cache(maxsize=2)
def _date_header(second: int) -> bytes:
    return b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


@functools.lru_cache(maxsize=64)
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))


def _head(response: Response, keep_alive: bool, framing: list[tuple[str, str]]) -> bytes:
    """The status line and fields. A Date is added unless the handler gives one (a
    cache answering from storage sends the stored response's own, RFC 9110 §6.6.1)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in (*response.headers, *framing)])
    close = b"" if keep_alive else b"Connection: close\r\n"
    date = b"" if "\ndate:" in "\n" + fields.lower() else _date_header(int(time.time()))
    return b"".join((_status_line(response.status), date, fields.encode("latin-1"), close, b"\r\n"))


class HttpConnection:
    """One client connection: read, parse, answer in order, until either side closes."""

    def expire(self, now: float) -> None:
        if self.read_deadline <= now:
            self._timeout.cancel()

    def __init__(self, stream: SocketChannel, handler: Handler, limits: Limits, client: str) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.client = client
        self.parser = _Parser(limits)
        self._header_deadline: float | None = None
        self._timeout = trio.CancelScope()
        self.read_deadline = math.inf  # watched by the server's reaper

    async def run(self) -> None:
        # Reads only note their deadline; the server's reaper cancels this scope
        # when one passes. A trio deadline moved twice per request cost more than
        # the rest of a cached answer.
        with self._timeout:
            await self._serve()
        if self._timeout.cancelled_caught:
            log.info("client %s: dropped, too slow to send a request", self.client)

    async def _serve(self) -> None:
        try:
            while True:
                if not await self._read():
                    return
                ready, self.parser.ready = self.parser.ready, []
                for request, keep_alive in ready:
                    request.client = self.client
                    if request.version == "1.1":
                        request.interim = self._send_interim
                    if not await self._answer(request, keep_alive):
                        return
        except _ClientError as exc:
            log.info("client %s: %s", self.client, exc)
            await self._send_quietly(simple_response(exc.status, str(exc)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a body that broke off mid-stream: the client sees a short read
            log.warning("client %s: response aborted: %s", self.client, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _read(self) -> bool:
        """Feed the parser one read; False when the client is gone. The header
        deadline runs from the start of the request, not from each read, so a
        client trickling bytes (slow loris) is still dropped."""
        if self.parser.in_headers:
            if self._header_deadline is None:
                self._header_deadline = trio.current_time() + self.limits.header_timeout
            self.read_deadline = self._header_deadline
        else:
            self._header_deadline = None
            self.read_deadline = trio.current_time() + self.limits.idle_timeout
        data = await self.stream.receive_some(READ_SIZE)
        self.read_deadline = math.inf  # the handler has its own deadlines
        if not data:
            return False
        self.parser.feed(data)
        if self.parser.continue_wanted:  # RFC 9110 §10.1.1: let the client send its body
            self.parser.continue_wanted = False
            if not self.parser.ready:
                await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    async def _answer(self, request: Request, keep_alive: bool) -> bool:
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("handler failed on %s %s", request.method, request.target)
            response = simple_response(500)
            keep_alive = False
        await self.send(response, keep_alive, head_only=request.method == "HEAD")
        return keep_alive

    async def _send_interim(self, status: int, headers: list[tuple[str, str]]) -> None:
        if not 100 <= status < 200:
            raise ValueError(f"{status} is not an interim status")
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
        await self.stream.send_all(_status_line(status) + fields + b"\r\n")

    async def send(self, response: Response, keep_alive: bool, head_only: bool = False) -> None:
        body = response.body
        bodiless = head_only or response.status in NO_BODY_STATUSES or response.status < 200
        has_length = response.header("content-length") is not None
        if isinstance(body, (bytes, bytearray, memoryview)):
            framing = [] if has_length or response.status in NO_BODY_STATUSES else [("Content-Length", str(len(body)))]
            head = _head(response, keep_alive, framing)
            await self.stream.send_all(head if bodiless else head + bytes(body))
            return
        chunked = not has_length and not bodiless
        await self.stream.send_all(_head(response, keep_alive, [("Transfer-Encoding", "chunked")] if chunked else []))
        if bodiless:
            await _close_body(body)
            return
        await self._stream_body(body, chunked)

    async def _stream_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        try:
            async for chunk in body:
                if chunk:
                    await self.stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                await self.stream.send_all(b"0\r\n\r\n")
        finally:
            await _close_body(body)

    async def _send_quietly(self, response: Response) -> None:
        try:
            with trio.move_on_after(1):
                await self.send(response, keep_alive=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _close_body(body: AsyncIterable[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    limits: Limits = Limits(),
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `nursery.start(serve_http, ...)` returns the listeners."""
    connections: set[HttpConnection] = set()

    async def on_connection(stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            client = f"{peer[0]}:{peer[1]}"
        except OSError:
            client = "?"
        connection = HttpConnection(SocketChannel.of_stream(stream), handler, limits, client)
        connections.add(connection)
        try:
            await connection.run()
        finally:
            connections.discard(connection)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reap, connections, min(0.5, limits.header_timeout / 4, limits.idle_timeout / 4))
        listeners = await nursery.start(functools.partial(trio.serve_tcp, on_connection, port, host=host))
        task_status.started(listeners)


async def _reap(connections: set[HttpConnection], period: float) -> None:
    """Drop the connections whose read deadline has passed."""
    while True:
        await trio.sleep(period)
        now = trio.current_time()
        for connection in list(connections):
            connection.expire(now)


def bound_port(listeners: list[trio.SocketListener]) -> int:
    """The port the first listener bound (for servers started on port 0)."""
    return int(listeners[0].socket.getsockname()[1])
