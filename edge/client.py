"""A small HTTP/1.1 client for the edge's upstreams, on trio and httptools.

Owns connections to upstream servers: an idle keep-alive pool per scheme, host and
port; writing a request; and reading responses with llhttp, which a general
client library does not allow in two ways a proxy needs. Interim 1xx responses
are handed to a callback before the final one, so they can be relayed (RFC 9110
§15.2). A body is framed by Content-Length, chunked coding, or the connection's
close, which is what any transfer coding other than a final chunked means for a
response (RFC 9112 §6.3). A request body is sent whole, or streamed on as the
client sends it (the client's next bytes are read only when the upstream has
taken the last: back-pressure, not buffering). A connection goes back to the pool only when its
response ended cleanly with nothing after it, and a pooled connection is checked
before reuse, so a request is never sent twice.
"""

from __future__ import annotations

import select
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import httptools
import trio

from .messages import RequestBody
from .policy import field_values, list_members, origin_form

READ_SIZE = 65536
MAX_HEAD_BYTES = 64 * 1024

Interim = Callable[[int, list[tuple[str, str]]], Awaitable[None]]
Content = bytes | RequestBody  # a request body: whole, or streamed from a client as it arrives


class ClientError(Exception):
    """The exchange failed. `unsent` says the request never left (connecting failed);
    `timed_out` says a deadline passed."""

    def __init__(self, message: str, *, unsent: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent
        self.timed_out = timed_out


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"not an http(s) URL: {url!r}", unsent=True)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Origin(parts.scheme, parts.hostname, port), origin_form(parts)


class _ResponseParser:
    """llhttp callbacks for one exchange: interim responses, the final head, body chunks."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.interim: list[tuple[int, list[tuple[str, str]]]] = []
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.complete = False
        self.trailing = False  # bytes came after the response: the connection is spoiled
        self.chunks: list[bytes] = []
        self._fields: list[tuple[str, str]] = []

    def on_message_begin(self) -> None:
        if self.complete:
            self.trailing = True
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim: its message completes next
        self.status, self.headers, self.head_done = status, self._fields, True

    def on_body(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def on_message_complete(self) -> None:
        if not self.head_done:
            self.interim.append((self.parser.get_status_code(), self._fields))
            return
        self.complete = True

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:  # junk after a complete response
                self.trailing = True
                return
            raise ClientError(f"malformed response: {exc}") from None

    def take_chunks(self) -> list[bytes]:
        chunks, self.chunks = self.chunks, []
        return chunks


class _Connection:
    def __init__(self, stream: trio.abc.Stream, origin: Origin) -> None:
        self.stream = stream
        self.origin = origin

    def looks_idle(self) -> bool:
        """True unless the server closed the connection or sent something unasked
        (either makes the socket readable while no request is out)."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return True  # TLS: cannot look under the record layer; trust the pool
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close_now(self) -> None:
        sock = getattr(self.stream, "socket", None)
        if sock is not None:
            sock.close()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


@dataclass
class ClientResponse:
    status: int
    headers: list[tuple[str, str]]
    chunks: Callable[[], AsyncIterator[bytes]]
    close: Callable[[], Awaitable[None]]
    interim: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)


class HttpClient:
    """Requests over pooled keep-alive connections; `timeout` bounds connecting and
    each read or write."""

    def __init__(self, timeout: float, max_idle_per_origin: int = 64) -> None:
        self.timeout = timeout
        self.max_idle = max_idle_per_origin
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl = ssl.create_default_context()

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                await connection.aclose()
        self._idle.clear()

    async def request(
        self, method: str, url: str, headers: list[tuple[str, str]], body: Content = b"", on_interim: Interim | None = None
    ) -> ClientResponse:
        """Send a request and read up to the final response's head. Interim
        responses go to `on_interim` as they arrive. The caller reads the body
        through `chunks()` and must await `close()`."""
        origin, target = split_url(url)
        connection = await self._connection(origin)
        try:
            await self._send(connection, method, target, headers, body)
            parser = _ResponseParser()
            await self._read_head(connection, parser, on_interim)
        except BaseException:
            await connection.aclose()
            raise
        return self._response(connection, parser, method == "HEAD")

    async def _connection(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()
            if connection.looks_idle():
                return connection
            await connection.aclose()
        try:
            with trio.fail_after(self.timeout):
                if origin.scheme == "https":
                    stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(origin.host, origin.port, ssl_context=self._ssl)
                else:
                    stream = await trio.open_tcp_stream(origin.host, origin.port)
        except trio.TooSlowError:
            raise ClientError(f"connecting to {origin.authority} timed out", unsent=True, timed_out=True) from None
        except OSError as exc:
            raise ClientError(f"cannot connect to {origin.authority}: {exc}", unsent=True) from None
        return _Connection(stream, origin)

    async def _send(self, connection: _Connection, method: str, target: str, headers: list[tuple[str, str]], body: Content) -> None:
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {connection.origin.authority}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines += _framing(method, body)
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if not isinstance(body, RequestBody):
            await self._write(connection, head + body)
            return
        await self._write(connection, head)
        chunked = body.length is None
        async for chunk in body:  # a BodyError (the client's side broke) goes to the caller as it is
            await self._write(connection, b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            await self._write(connection, b"0\r\n\r\n")

    async def _write(self, connection: _Connection, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await connection.stream.send_all(data)
        except trio.TooSlowError:
            raise ClientError("sending the request timed out", timed_out=True) from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise ClientError(f"connection broke while sending: {exc or type(exc).__name__}") from None

    async def _receive(self, connection: _Connection) -> bytes:
        try:
            with trio.fail_after(self.timeout):
                return await connection.stream.receive_some(READ_SIZE)
        except trio.TooSlowError:
            raise ClientError("no answer in time", timed_out=True) from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise ClientError(f"connection broke: {exc}") from None

    async def _read_head(self, connection: _Connection, parser: _ResponseParser, on_interim: Interim | None) -> None:
        received = 0
        while not parser.head_done:
            data = await self._receive(connection)
            if not data:
                raise ClientError("the server closed the connection without a response")
            received += len(data)
            if received > MAX_HEAD_BYTES and not parser.head_done:
                raise ClientError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            parser.feed(data)
            while parser.interim and on_interim is not None:
                status, fields = parser.interim.pop(0)
                await on_interim(status, fields)

    def _response(self, connection: _Connection, parser: _ResponseParser, head_request: bool) -> ClientResponse:
        if head_request:  # no body follows, whatever the head says
            parser.complete = True
            parser.trailing = parser.trailing or bool(parser.chunks)
            parser.chunks = []
        until_close = not head_request and _delimited_by_close(parser.status, parser.headers)
        state = {"released": False}

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in parser.take_chunks():
                yield chunk
            while not parser.complete:
                data = await self._receive(connection)
                if not data:
                    if until_close:
                        parser.complete = True
                        break
                    raise ClientError("the server closed the connection mid-body")
                parser.feed(data)
                for chunk in parser.take_chunks():
                    yield chunk

        async def close() -> None:
            if state["released"]:
                return
            state["released"] = True
            if parser.complete and not parser.trailing and not until_close and _keeps_alive(parser.headers):
                self._release(connection)
            else:
                await connection.aclose()

        return ClientResponse(parser.status, parser.headers, chunks, close, parser.interim)

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) < self.max_idle:
            idle.append(connection)
        else:
            connection.close_now()


def _framing(method: str, body: Content) -> list[str]:
    """The fields that frame a request body: its length, or chunked when a
    streamed body's length is unknown."""
    length = len(body) if isinstance(body, bytes) else body.length
    if length is None:
        return ["Transfer-Encoding: chunked\r\n"]
    if length or method in ("POST", "PUT", "PATCH"):
        return [f"Content-Length: {length}\r\n"]
    return []


def _delimited_by_close(status: int, headers: list[tuple[str, str]]) -> bool:
    """Does this response's body run to the connection's close (RFC 9112 §6.3)?"""
    if status in (204, 304) or 100 <= status < 200:
        return False
    codings = list_members(field_values(headers, "transfer-encoding"))
    if codings:
        return codings[-1].lower() != "chunked"
    return not field_values(headers, "content-length")


def _keeps_alive(headers: list[tuple[str, str]]) -> bool:
    return "close" not in (member.lower() for member in list_members(field_values(headers, "connection")))
