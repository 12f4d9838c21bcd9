"""One HTTP/1.1 server connection on trio, shared by the edge and the origin.

Owns one client connection: reading requests through `h1parse`, keep-alive and
pipelining (responses go out in request order, one request at a time), streaming
each request body to the handler as it reads it, the deadlines that bound a slow
client (its request head, its body's minimum rate, its reading of the response,
and idleness between requests), and framing responses (Content-Length, or chunked
for streamed bodies of unknown length). What to answer is the handler's business:
it gets a `Request` and returns a `Response`. Accepting connections under a cap is
`httpserver`'s.

Memory per connection is bounded whatever the client sends: one socket read
(64 KiB) and the request head (16 KiB by default), since a body is read only when
the handler asks for more of it.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import AsyncIterable, Protocol

import trio

from dht.streams import SocketChannel

from .h1parse import Limits, RequestError, RequestParser
from .messages import BodyError, Handler, Request, RequestBody, Response, simple_response

log = logging.getLogger(__name__)

READ_SIZE = 65536
COPY_BELOW = 16384  # a body up to this size is joined to its head (one plain send beats a gathered one)
DRAIN_LIMIT = 65536  # an unread body up to this size is read and dropped to keep the connection
LINGER_SECONDS = 2.0  # reading what a client still sends after an early answer, before closing
NO_BODY_STATUSES = frozenset({204, 304})

DROPPED = {
    "idle": "closed an idle keep-alive connection",
    "head": "dropped: its request head took too long",
    "body": "dropped: its request body came too slowly",
    "send": "dropped: it stopped reading the response",
    "handler": "dropped",
    "evicted": "closed while idle, to make room for new clients",
}


class Registry(Protocol):
    """Where a connection says it waits for a request (and may be closed to make room)."""

    def idle(self, connection: "HttpConnection") -> None: ...

    def busy(self, connection: "HttpConnection") -> None: ...


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
    """One client connection: read, parse, answer in order, until either side closes
    or a deadline passes. Deadlines are plain numbers (`deadline`, with `phase`
    saying what it is for) that the server's reaper checks twice a second: moving
    a trio deadline twice per request cost more than the rest of a cached answer."""

    def __init__(self, channel: SocketChannel, handler: Handler, limits: Limits, client: str, registry: Registry) -> None:
        self.channel = channel
        self.handler = handler
        self.limits = limits
        self.client = client
        self.registry = registry
        self.parser = RequestParser(limits)
        self.deadline = math.inf
        self.phase = "idle"
        self._scope = trio.CancelScope()
        self._head_deadline: float | None = None
        self._body_started = 0.0
        self._taken_mark: int | None = None  # bytes the client had taken at the reaper's last look
        self._continue = False  # the client waits for "100 Continue" before its body
        self._failure: RequestError | None = None  # the client broke a limit while its body was read
        self._client_gone = False
        self._linger = False

    def expire(self, now: float) -> None:
        if self.phase == "send":
            self._watch_sending(now)
        if self.deadline <= now:
            self._scope.cancel()

    def _watch_sending(self, now: float) -> None:
        """While an answer is going out, move the deadline each time the client has
        taken more of it since the last look (the first look sets the baseline)."""
        taken = self.channel.bytes_taken()
        if self._taken_mark is not None and taken != self._taken_mark:
            self.deadline = now + self.limits.send_timeout
        self._taken_mark = taken

    def evict(self) -> None:
        """Close now, to make room for a new client (only while idle)."""
        self.phase = "evicted"
        self._scope.cancel()
        self.channel.close()

    async def run(self) -> None:
        with self._scope:
            await self._serve()
        if self._scope.cancelled_caught:
            level = logging.DEBUG if self.phase in ("idle", "evicted") else logging.INFO
            log.log(level, "client %s: %s", self.client, DROPPED[self.phase])

    async def _serve(self) -> None:
        try:
            await self._serve_requests()
        except RequestError as exc:
            log.info("client %s: %s", self.client, exc)
            await self._send_quietly(simple_response(exc.status, str(exc)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, BodyError):
            pass
        except Exception as exc:  # a body that broke off mid-stream: the client sees a short read
            log.warning("client %s: response aborted: %s", self.client, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _serve_requests(self) -> None:
        ready = self.parser.ready
        while True:
            if not ready:
                if self.parser.tunnel or not await self._read_request():
                    return
                continue
            request, keep_alive = ready.pop(0)
            request.client = self.client
            if request.version == "1.1":
                request.interim = self._send_interim
            if not await self._answer(request, keep_alive):
                return

    async def _read_request(self) -> bool:
        """Feed the parser one read while no request is ready; False when the
        client is gone. The head deadline runs from the request's first byte, not
        from each read, so a client trickling bytes (slow loris) is still dropped."""
        waiting = not self.parser.in_headers
        if waiting:
            self._head_deadline = None
            self.deadline, self.phase = trio.current_time() + self.limits.idle_timeout, "idle"
            self.registry.idle(self)
        else:
            if self._head_deadline is None:
                self._head_deadline = trio.current_time() + self.limits.header_timeout
            self.deadline, self.phase = self._head_deadline, "head"
        try:
            data = await self.channel.receive_some(READ_SIZE)
        finally:
            if waiting:
                self.registry.busy(self)
        self.deadline, self.phase = math.inf, "handler"  # the handler has its own deadlines
        if not data:
            return False
        self.parser.feed(data)
        return True

    async def _answer(self, request: Request, keep_alive: bool) -> bool:
        body = request.body
        if not body.complete:
            self._prepare_body(request)
        try:
            response: Response | None = await self.handler(request)
        except BodyError:
            response = None
        except Exception:
            log.exception("handler failed on %s %s", request.method, request.target[:200])
            response, keep_alive = simple_response(500), False
        if self._failure is not None:
            raise self._failure
        if response is None or self._client_gone:
            return False
        if not body.complete and not self._drainable(body):
            keep_alive, self._linger = False, True
        await self.send(response, keep_alive, head_only=request.method == "HEAD")
        if keep_alive and not body.complete:
            await self._drain(body)
        return keep_alive

    def _prepare_body(self, request: Request) -> None:
        self._body_started = trio.current_time()
        expect = request.headers.get("expect")
        self._continue = request.version == "1.1" and expect is not None and expect.strip().lower() == "100-continue"
        request.body.attach(self._pull_body)

    async def _pull_body(self) -> None:
        """Read more of the request body for a handler that wants it: within the
        body's deadline (a grace plus a minimum rate), failing with BodyError."""
        if self._continue:  # RFC 9110 §10.1.1: the handler wants the body
            self._continue = False
            await self.channel.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        received = self.parser.body_received
        self.deadline = self._body_started + self.limits.body_timeout + received / self.limits.min_body_rate
        self.phase = "body"
        try:
            data = await self.channel.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._client_gone = True
            raise BodyError(f"the client's connection broke during its request body: {exc}") from None
        self.deadline, self.phase = math.inf, "handler"
        if not data:
            self._client_gone = True
            raise BodyError("the client closed the connection before the end of its request body")
        try:
            self.parser.feed(data)
        except RequestError as exc:
            self._failure = exc
            raise BodyError(str(exc)) from None

    @staticmethod
    def _drainable(body: RequestBody) -> bool:
        return body.length is not None and body.length - body.received <= DRAIN_LIMIT

    async def _drain(self, body: RequestBody) -> None:
        """Read and drop the rest of a small body the handler left, so the next
        request on the connection can be read."""
        while await body.receive():
            pass

    async def _send_interim(self, status: int, headers: list[tuple[str, str]]) -> None:
        if not 100 <= status < 200:
            raise ValueError(f"{status} is not an interim status")
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
        await self._transmit(_status_line(status) + fields + b"\r\n")

    async def send(self, response: Response, keep_alive: bool, head_only: bool = False) -> None:
        body = response.body
        bodiless = head_only or response.status in NO_BODY_STATUSES or response.status < 200
        has_length = response.header("content-length") is not None
        if isinstance(body, (bytes, bytearray, memoryview)):
            framing = [] if has_length or response.status in NO_BODY_STATUSES else [("Content-Length", str(len(body)))]
            head = _head(response, keep_alive, framing)
            if bodiless:
                await self._transmit(head)
            elif len(body) <= COPY_BELOW:
                await self._transmit(head + body)
            else:
                await self._transmit(head, body)
            return
        chunked = not has_length and not bodiless
        await self._transmit(_head(response, keep_alive, [("Transfer-Encoding", "chunked")] if chunked else []))
        if bodiless:
            await _close_body(body)
            return
        await self._stream_body(body, chunked)

    async def _stream_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        try:
            async for chunk in body:
                if chunk:
                    await self._transmit(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                await self._transmit(b"0\r\n\r\n")
        finally:
            await _close_body(body)

    async def _transmit(self, *data: bytes | bytearray | memoryview) -> None:
        """Send in one gathering write; the client is dropped once it takes nothing
        for `send_timeout` (`expire` moves the deadline while bytes leave)."""
        self.phase = "send"
        self._taken_mark = None  # the reaper's first look takes it, off the fast path
        self.deadline = trio.current_time() + self.limits.send_timeout
        await self.channel.send_many(data)
        self.deadline, self.phase = math.inf, "handler"

    async def _send_quietly(self, response: Response) -> None:
        try:
            with trio.move_on_after(1):
                await self.send(response, keep_alive=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _close(self) -> None:
        """Close; after an answer given before the client finished sending, read
        and drop what it still sends for a moment first, so that the kernel does
        not reset the connection under the answer (a lingering close)."""
        if self._linger and not self._scope.cancel_called:
            try:
                self.channel.sock.shutdown(socket.SHUT_WR)
                with trio.move_on_after(LINGER_SECONDS):
                    while await self.channel.receive_some(READ_SIZE):
                        pass
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await self.channel.aclose()


async def _close_body(body: AsyncIterable[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
