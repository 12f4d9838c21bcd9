"""The TCP transport: trio streams carrying the frames of `dht.wire`.

Owns sockets and nothing else. Outgoing calls share one persistent connection per
peer, multiplexed by request ID, with a reader task that routes replies to their
callers; every call has a deadline. Incoming connections are served with each
request handled in its own task (bounded per connection), replies written under a
lock. A peer that sends garbage, an oversized length, a stalled partial frame or an
ill-typed message gets an error reply or a closed connection; the node goes on.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable

import trio

from .errors import CallTimeout, ChordError, FrameTooLarge, PeerUnreachable, ProtocolError, RemoteError, TransportError
from .transport import Handler, remote_error_of
from .wire import (
    MAX_FRAME,
    FrameDecoder,
    Request,
    encode_error,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
    request_id_of,
)

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
MAX_HANDLERS_PER_CONNECTION = 128


def split_address(address: str) -> tuple[str, int]:
    """Parse "host:port" (or "[v6]:port"); raise ValueError with the reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {address!r} is out of range")
    return host.strip("[]"), port


class _PendingCall:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _ClientConnection:
    """One outgoing persistent connection and the calls waiting on it."""

    def __init__(self, address: str, stream: trio.SocketStream, max_frame: int) -> None:
        self.address = address
        self.stream = stream
        self.max_frame = max_frame
        self.pending: dict[int, _PendingCall] = {}
        self.outbox = bytearray()
        self.sending = False
        self.closed = False
        self._next_id = 0

    def new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return self._next_id

    async def read_replies(self) -> None:
        decoder = FrameDecoder(self.max_frame)
        failure: TransportError = PeerUnreachable(f"connection to {self.address} closed")
        try:
            while True:
                payload = decoder.next_payload()
                if payload is None:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    decoder.feed(data)
                    continue
                reply = parse_reply(payload)
                waiter = self.pending.pop(reply.request_id, None)
                if waiter is not None:  # else the caller already gave up
                    waiter.result = reply
                    waiter.done.set()
        except ProtocolError as exc:
            failure = ProtocolError(f"bad reply from {self.address}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = PeerUnreachable(f"connection to {self.address} lost: {exc}")
        finally:
            self.fail_all(failure)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    def fail_all(self, error: TransportError) -> None:
        self.closed = True
        for waiter in self.pending.values():
            waiter.error = error
            waiter.done.set()
        self.pending.clear()


class TcpTransport:
    """A node's TCP endpoint; create it with `open_tcp_transport`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        max_frame: int = MAX_FRAME,
        frame_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._nursery = nursery
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self.connect_timeout = connect_timeout
        self._address = ""
        self._handler: Handler | None = None
        self._connections: dict[str, _ClientConnection] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self.listeners: list[trio.SocketListener] = []

    @property
    def address(self) -> str:
        return self._address

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    # -- calling ----------------------------------------------------------------

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float) -> Any:
        with trio.move_on_after(timeout):
            return await self._call(address, method, args)
        raise CallTimeout(f"{method} to {address} timed out after {timeout:g}s")

    async def _call(self, address: str, method: str, args: list[Any]) -> Any:
        connection = await self._connection(address)
        request_id = connection.new_id()
        frame = encode_request(request_id, method, args, self.max_frame)
        waiter = _PendingCall()
        connection.pending[request_id] = waiter
        try:
            await self._send(connection, frame)
            await waiter.done.wait()
        finally:
            connection.pending.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.result
        if not reply.ok:
            raise RemoteError(*reply.result)
        return reply.result

    async def _send(self, connection: _ClientConnection, frame: bytes) -> None:
        """Queue a frame; the caller that finds no send under way sends everything
        queued, so concurrent calls share syscalls and a lone call pays no extra
        task switch."""
        if connection.closed:
            raise PeerUnreachable(f"connection to {connection.address} closed")
        connection.outbox += frame
        if connection.sending:
            return  # the caller sending now carries this frame too
        connection.sending = True
        try:
            while connection.outbox:
                data, connection.outbox = bytes(connection.outbox), bytearray()
                await connection.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._drop(connection)
            raise PeerUnreachable(f"send to {connection.address} failed: {exc}") from None
        except BaseException:
            self._drop(connection)  # cancelled mid-send: a half-written frame poisons the stream
            raise
        finally:
            connection.sending = False

    def _drop(self, connection: _ClientConnection) -> None:
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
        connection.fail_all(PeerUnreachable(f"connection to {connection.address} dropped"))
        self._nursery.start_soon(connection.stream.aclose)

    async def _connection(self, address: str) -> _ClientConnection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connect_locks.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            host, port = split_address(address)
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(host, port)
            except trio.TooSlowError:
                raise CallTimeout(f"connecting to {address} timed out") from None
            except OSError as exc:
                raise PeerUnreachable(f"cannot connect to {address}: {exc.strerror or exc}") from None
            connection = _ClientConnection(address, stream, self.max_frame)
            self._connections[address] = connection
            self._nursery.start_soon(self._run_reader, connection)
            return connection

    async def _run_reader(self, connection: _ClientConnection) -> None:
        try:
            await connection.read_replies()
        finally:
            if self._connections.get(connection.address) is connection:
                del self._connections[connection.address]

    # -- serving ----------------------------------------------------------------

    async def listen(self, host: str, port: int) -> None:
        serve = functools.partial(trio.serve_tcp, self._serve_connection, port, host=host)
        self.listeners = await self._nursery.start(serve)
        bound_host, bound_port = self.listeners[0].socket.getsockname()[:2]
        self._address = f"{host if host not in ('', '0.0.0.0') else bound_host}:{bound_port}"

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            async with trio.open_nursery() as handlers:
                connection = _ServerConnection(stream, handlers, self._handler, self.max_frame)
                await connection.serve(self.frame_timeout)
                handlers.cancel_scope.cancel()  # the client is gone: nobody awaits these replies
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()


class _ServerConnection:
    """One incoming connection. A handler that answers at once (returns a value)
    is answered inline, and the replies to every request in one read go out in a
    single send; a handler that returns an awaitable runs in its own task, at most
    MAX_HANDLERS_PER_CONNECTION at a time."""

    def __init__(self, stream: trio.SocketStream, handlers: trio.Nursery, handler: Handler | None, max_frame: int) -> None:
        self.stream = stream
        self.handlers = handlers
        self.handler = handler
        self.max_frame = max_frame
        self.send_lock = trio.Lock()
        self.limiter = trio.CapacityLimiter(MAX_HANDLERS_PER_CONNECTION)
        self.outbox = bytearray()

    async def serve(self, frame_timeout: float) -> None:
        decoder = FrameDecoder(self.max_frame)
        frame_deadline = math.inf  # a started frame must be complete by then
        try:
            while True:
                try:
                    payload = decoder.next_payload()
                except FrameTooLarge as exc:
                    self.outbox += encode_error(None, "FrameTooLarge", str(exc))
                    await self.flush()
                    return
                if payload is None:
                    await self.flush()
                    if decoder.in_frame and frame_deadline == math.inf:
                        frame_deadline = trio.current_time() + frame_timeout
                    with trio.fail_at(frame_deadline):
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    decoder.feed(data)
                    continue
                frame_deadline = math.inf
                await self.dispatch(payload)
        except trio.TooSlowError:
            log.info("dropping a connection that stalled mid-frame")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def dispatch(self, payload: bytes) -> None:
        try:
            request = parse_request(payload)
        except ProtocolError as exc:
            self.outbox += encode_error(request_id_of(payload), "ProtocolError", str(exc))
            return
        try:
            if self.handler is None:
                raise RemoteError("Unavailable", "this endpoint serves no calls")
            result = self.handler(request.method, request.args)
        except Exception as exc:  # reported to the caller, never fatal to the node
            self.outbox += self.error_frame(request, exc)
            return
        if inspect.isawaitable(result):
            slot = object()
            await self.limiter.acquire_on_behalf_of(slot)
            self.handlers.start_soon(self.finish, request, result, slot)
        else:
            self.outbox += self.reply_frame(request, result)
        if len(self.outbox) >= RECEIVE_SIZE:
            await self.flush()

    async def finish(self, request: Request, pending: Awaitable[Any], slot: object) -> None:
        try:
            try:
                frame = self.reply_frame(request, await pending)
            except Exception as exc:  # reported to the caller, never fatal to the node
                frame = self.error_frame(request, exc)
            await self.send(frame)
        finally:
            self.limiter.release_on_behalf_of(slot)

    def reply_frame(self, request: Request, result: Any) -> bytes:
        try:
            return encode_reply(request.request_id, True, result, self.max_frame)
        except (FrameTooLarge, TypeError) as exc:
            return self.error_frame(request, exc)

    def error_frame(self, request: Request, exc: Exception) -> bytes:
        if not isinstance(exc, (ValueError, LookupError, ChordError)):
            log.exception("handler for %s failed", request.method, exc_info=exc)
        return encode_error(request.request_id, *remote_error_of(exc))

    async def flush(self) -> None:
        if self.outbox:
            frames, self.outbox = bytes(self.outbox), bytearray()
            await self.send(frames)

    async def send(self, data: bytes) -> None:
        try:
            async with self.send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def open_tcp_transport(
    host: str | None = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[TcpTransport]:
    """A TCP transport listening on host:port (port 0 picks one), or a call-only
    client when host is None. Closes every connection on exit. An exception from
    the body (or from binding) comes out as itself, not wrapped in a group: the
    transport's own tasks never raise."""
    try:
        async with trio.open_nursery() as nursery:
            transport = TcpTransport(nursery, **options)
            if host is not None:
                await transport.listen(host, port)
            try:
                yield transport
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
