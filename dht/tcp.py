"""The TCP transport: trio streams, plain or mutual TLS, carrying the frames of `dht.wire`.

Owns sockets and links, nothing else. Outgoing calls share one persistent
connection per peer, multiplexed by request ID, with a reader task that routes
replies to their callers; every call has a deadline. Incoming connections are
accepted, secured and handed to `dht.tcpserve`, which passes each request with its
caller's identity to `handle`: the handler of the ring position the request names
(a process's virtual nodes share its socket and links: `dht.vnodes`).

With TLS credentials (`dht.tls`) every link is mutual TLS under the cluster CA: a
connection that does not complete a handshake with a cluster certificate within
`handshake_timeout` is closed and logged (rate-limited) with the peer's address
and the reason. A call that names a node ID goes only to a peer whose certificate
gives that ID (IdentityMismatch otherwise), and only to ring nodes. A peer that
sends garbage, an oversized length, a stalled partial frame or an ill-typed
message gets an error reply or a closed connection; the node goes on. Past
`max_connections` open links, new ones are closed at once.
"""

from __future__ import annotations

import functools
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from .addresses import MAX_VNODES, advertised_address, host_of, split_address, vnode_index
from .errors import (
    BadRequest,
    CallTimeout,
    CertificateError,
    IdentityMismatch,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
    TransportError,
)
from .identity import UNAUTHENTICATED, PeerIdentity, Role
from .streams import SendQueue, SocketChannel
from .tcpserve import RefusalLog, ServerConnection, receive_frames
from .tls import TlsCredentials, handshake_failure
from .transport import Handler
from .wire import MAX_FRAME, FrameDecoder, Request, frame_parts, parse_reply, request_message

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 4096
UNACKED_LIMIT = 15.0  # seconds sent data may stay unacknowledged before the kernel gives up on a link


class _PendingCall:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _ClientConnection:
    """One outgoing persistent connection and the calls waiting on it."""

    def __init__(self, address: str, stream: SocketChannel, max_frame: int, peer: PeerIdentity) -> None:
        self.address = address
        self.stream = stream
        self.max_frame = max_frame
        self.peer = peer
        self.pending: dict[int, _PendingCall] = {}
        self.outbox = SendQueue()
        self.sending = False
        self.active = 0  # calls between entering _call and getting their answer
        self.last_received = trio.current_time()
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
                    if not await receive_frames(self.stream, decoder):
                        break
                    self.last_received = trio.current_time()
                    continue
                reply = parse_reply(payload)
                waiter = self.pending.pop(reply.request_id, None)
                if waiter is not None:  # else the caller already gave up
                    waiter.result = reply
                    waiter.done.set()
        except ProtocolError as exc:
            failure = ProtocolError(f"bad reply from {self.address}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = PeerUnreachable(f"connection to {self.address} lost: {handshake_failure(exc) if self.stream.tls else exc}")
        except Exception:  # a bug, not the peer's doing: fail the calls, keep the node
            log.exception("reading replies from %s failed", self.address)
            failure = PeerUnreachable(f"connection to {self.address} failed")
        finally:
            self.fail_all(failure)
            await trio.aclose_forcefully(self.stream)

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
        tls: TlsCredentials | None = None,
        max_frame: int = MAX_FRAME,
        frame_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        idle_timeout: float = 300.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._nursery = nursery
        self.tls = tls
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self.refusals = RefusalLog()
        self._address = ""
        self._handlers: dict[int, Handler] = {}  # by virtual node index; 0 is the plain address
        self._connections: dict[str, _ClientConnection] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self.listeners: list[trio.SocketListener] = []

    @property
    def address(self) -> str:
        return self._address

    @property
    def local_node_id(self) -> int | None:
        return self.tls.node_id if self.tls else None

    def set_handler(self, handler: Handler, vnode: int = 0) -> None:
        """Answer calls to this address, or to its virtual node `vnode` ("address/vnode")."""
        if not 0 <= vnode < MAX_VNODES:
            raise ValueError(f"a virtual node index is 0..{MAX_VNODES - 1}, not {vnode}")
        self._handlers[vnode] = handler

    def handle(self, caller: PeerIdentity, request: Request) -> Any:
        """Pass an incoming call to the handler of the position it names."""
        handler = self._handlers.get(request.vnode)
        if handler is None and request.vnode:
            raise BadRequest(f"no ring position {request.vnode} here")
        if handler is None:
            raise RemoteError("Unavailable", "this endpoint serves no calls")
        return handler(caller, request.method, request.args)

    # -- calling ----------------------------------------------------------------

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float, node_id: int | None = None) -> Any:
        with trio.move_on_after(timeout):
            return await self._call(address, method, args, node_id)
        raise CallTimeout(f"{method} to {address} timed out after {timeout:g}s")

    async def _call(self, address: str, method: str, args: list[Any], node_id: int | None) -> Any:
        try:
            vnode = vnode_index(address)
        except ValueError as exc:
            raise PeerUnreachable(str(exc)) from None
        connection = await self._connection(host_of(address))
        peer = connection.peer
        if node_id is not None and peer.authenticated and self.tls is not None and peer.node_id is not None:
            if self.tls.space.vnode_id(peer.node_id, vnode) != node_id:
                raise IdentityMismatch(f"{address} is {peer}, whose certificate gives another ID than the one asked for")
        request_id = connection.new_id()
        frame = frame_parts(request_message(request_id, method, args, vnode), self.max_frame)
        waiter = _PendingCall()
        connection.pending[request_id] = waiter
        connection.active += 1
        sent_at = trio.current_time()
        try:
            await self._send(connection, frame)
            await waiter.done.wait()
        finally:
            connection.active -= 1
            connection.pending.pop(request_id, None)
            if not waiter.done.is_set() and connection.last_received < sent_at and not connection.closed:
                # Not a byte since this call went out: the link is probably dead (a
                # cut cable keeps a TCP connection "open" for minutes); a new one
                # costs a handshake, a stale one costs every later call its timeout.
                self._drop(connection)
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.result
        if not reply.ok:
            raise RemoteError(*reply.result)
        return reply.result

    async def _send(self, connection: _ClientConnection, frame: tuple[bytes, bytes]) -> None:
        """Queue a frame; the caller that finds no send under way sends everything
        queued, so concurrent calls share syscalls (and TLS records). When other
        calls are under way it first yields once, letting them queue theirs; a
        lone call pays no extra task switch."""
        if connection.closed:
            raise PeerUnreachable(f"connection to {connection.address} closed")
        connection.outbox.add(*frame)
        if connection.sending:
            return  # the caller sending now carries this frame too
        connection.sending = True
        try:
            if connection.active > 1:
                await trio.lowlevel.cancel_shielded_checkpoint()
            while connection.outbox:
                await connection.stream.send_many(connection.outbox.take())
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
        self._nursery.start_soon(trio.aclose_forcefully, connection.stream)

    async def _connection(self, address: str) -> _ClientConnection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connect_locks.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            try:
                host, port = split_address(address)
            except ValueError as exc:
                raise PeerUnreachable(str(exc)) from None
            try:
                with trio.fail_after(self.connect_timeout):
                    channel = SocketChannel.of_stream(await trio.open_tcp_stream(host, port))
                channel.limit_unacknowledged(UNACKED_LIMIT)
            except trio.TooSlowError:
                raise CallTimeout(f"connecting to {address} timed out") from None
            except OSError as exc:
                raise PeerUnreachable(f"cannot connect to {address}: {exc.strerror or exc}") from None
            peer = await self._secure_client_side(address, channel)
            connection = _ClientConnection(address, channel, self.max_frame, peer)
            self._connections[address] = connection
            self._nursery.start_soon(self._run_reader, connection)
            return connection

    async def _secure_client_side(self, address: str, channel: SocketChannel) -> PeerIdentity:
        """The TLS handshake of an outgoing link; the peer must be a ring node. The
        channel is closed on any failure."""
        if self.tls is None:
            return UNAUTHENTICATED
        try:
            with trio.fail_after(self.handshake_timeout):
                await channel.start_tls(self.tls.client_context, server_side=False)
            peer = self.tls.peer_identity(channel.peer_certificate())
        except trio.TooSlowError:
            await channel.aclose()
            raise CallTimeout(f"TLS handshake with {address} timed out") from None
        except (trio.BrokenResourceError, CertificateError) as exc:
            await channel.aclose()
            raise PeerUnreachable(f"TLS handshake with {address} failed: {handshake_failure(exc)}") from None
        if peer.role is not Role.NODE:
            await channel.aclose()
            raise IdentityMismatch(f"{address} is {peer}, not a ring node")
        return peer

    async def _run_reader(self, connection: _ClientConnection) -> None:
        try:
            await connection.read_replies()
        finally:
            if self._connections.get(connection.address) is connection:
                del self._connections[connection.address]

    # -- serving ----------------------------------------------------------------

    async def listen(self, host: str, port: int, advertise: str | None = None) -> None:
        """Serve on host:port; peers are told `advertise` (or host:port). A wildcard
        host needs an advertised address: ValueError, before binding."""
        advertised_address(host, port or 1, advertise)  # fail before binding
        serve = functools.partial(trio.serve_tcp, self._serve_connection, port, host=host or None)
        self.listeners = await self._nursery.start(serve)
        bound_port = self.listeners[0].socket.getsockname()[1]
        self._address = advertised_address(host, bound_port, advertise)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """Serve one incoming link. Nothing that happens on it may reach the
        listener: an error here ends this connection only."""
        try:
            await self._serve_channel(SocketChannel.of_stream(stream))
        except Exception:  # a bug, not the peer's doing: this link goes, the node stays
            log.exception("serving a connection failed")

    async def _serve_channel(self, channel: SocketChannel) -> None:
        channel.limit_unacknowledged(UNACKED_LIMIT)
        self.open_connections += 1
        try:
            if self.open_connections > self.max_connections:
                self.refusals.refused(channel.peer_name(), f"already {self.max_connections} open connections")
                return
            caller = await self._secure_server_side(channel)
            if caller is None:
                return
            async with trio.open_nursery() as handlers:
                connection = ServerConnection(channel, handlers, self.handle, self.max_frame, caller)
                await connection.serve(self.frame_timeout, self.idle_timeout)
                handlers.cancel_scope.cancel()  # the client is gone: nobody awaits these replies
        finally:
            self.open_connections -= 1
            await channel.aclose()

    async def _secure_server_side(self, channel: SocketChannel) -> PeerIdentity | None:
        """The TLS handshake of an incoming link: the caller, or None after logging
        who was refused and why."""
        if self.tls is None:
            return UNAUTHENTICATED
        peer = channel.peer_name()
        try:
            with trio.fail_after(self.handshake_timeout):
                await channel.start_tls(self.tls.server_context, server_side=True)
            return self.tls.peer_identity(channel.peer_certificate())
        except trio.TooSlowError:
            reason = f"no TLS handshake within {self.handshake_timeout:g} s"
        except (trio.BrokenResourceError, trio.ClosedResourceError, CertificateError) as exc:
            reason = handshake_failure(exc)
        self.refusals.refused(peer, reason)
        return None


@asynccontextmanager
async def open_tcp_transport(
    host: str | None = "127.0.0.1", port: int = 0, *, advertise: str | None = None, **options: Any
) -> AsyncIterator[TcpTransport]:
    """A TCP transport listening on host:port (port 0 picks one), or a call-only
    client when host is None; `tls=` credentials make every link mutual TLS.
    Closes every connection on exit. An exception from the body (or from binding)
    comes out as itself, not wrapped in a group: the transport's own tasks never
    raise."""
    try:
        async with trio.open_nursery() as nursery:
            transport = TcpTransport(nursery, **options)
            if host is not None:
                await transport.listen(host, port, advertise)
            try:
                yield transport
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
