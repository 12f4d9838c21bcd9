"""An HTTP/1.1 server on trio, shared by the edge and the origin.

Owns accepting clients and holding the line under abuse: a cap on open connections
(by default three quarters of the open-file limit, so that upstream connections,
spools and the disk cache keep their files), closing the longest-idle keep-alive
connections first when near it, closing new connections at once (not leaving them
in the kernel's backlog) when at it, never spinning or flooding the log when the
process runs out of files anyway, and the reaper that enforces each connection's
deadline. One connection's protocol is `h1conn`'s; the message types are
`messages`'s (re-exported here for the servers that use them).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
from dataclasses import dataclass

import trio

from dht.streams import SocketChannel

from .h1conn import HttpConnection
from .h1parse import Limits
from .messages import Handler, Headers, Request, RequestBody, Response, simple_response

__all__ = ["Limits", "Headers", "Request", "RequestBody", "Response", "simple_response", "serve_http", "bound_port", "Listener"]

log = logging.getLogger(__name__)

EVICT_FROM = 0.9  # past this share of the cap, each new client closes the longest-idle one
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REPORT_EVERY = 10.0  # seconds between log lines about refused clients


@dataclass
class Listener:
    """A listening socket (for `bound_port`)."""

    socket: socket.socket


def default_connection_cap() -> int:
    """Three quarters of the open-file limit: the rest is for upstreams and files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft * 3 // 4)


class Server:
    """The connections of one server: admitted under a cap, the idle ones in the
    order they fell idle, and the counts of clients refused."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits
        self.cap = limits.max_connections or default_connection_cap()
        self.evict_from = max(1, int(self.cap * EVICT_FROM))
        self.connections: set[HttpConnection] = set()
        self._idle: dict[HttpConnection, None] = {}  # insertion order: longest idle first
        self.refused = 0
        self.evicted = 0
        self.out_of_files = 0
        self._reported = (-REPORT_EVERY, 0, 0)  # when the last warning was, and the counts then
        self._reserve: int | None = _open_reserve()

    # -- the Registry a connection reports to ----------------------------------------

    def idle(self, connection: HttpConnection) -> None:
        self._idle[connection] = None

    def busy(self, connection: HttpConnection) -> None:
        self._idle.pop(connection, None)

    # -- accepting -----------------------------------------------------------------

    async def accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        listener.setblocking(False)
        while True:
            try:
                sock, address = listener.accept()
            except BlockingIOError:  # the backlog is empty: only now let others run
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_FILES:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue
                    raise
                await self._out_of_files(listener)
                continue
            self._admit(sock, address, nursery)

    def _admit(self, sock: socket.socket, address: object, nursery: trio.Nursery) -> None:
        if len(self.connections) >= self.evict_from:
            self._evict_one()
        if len(self.connections) >= self.cap:
            sock.close()
            self.refused += 1
            self._report()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = HttpConnection(SocketChannel(sock), self.handler, self.limits, _client_name(address), self)
        self.connections.add(connection)
        self.idle(connection)  # idle until its first request, even before its task first runs
        nursery.start_soon(self._run, connection)

    async def _run(self, connection: HttpConnection) -> None:
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self._idle.pop(connection, None)

    def _evict_one(self) -> bool:
        """Close the connection idle the longest; False when none is idle."""
        for connection in self._idle:
            del self._idle[connection]
            self.connections.discard(connection)
            connection.evict()
            self.evicted += 1
            return True
        return False

    async def _out_of_files(self, listener: socket.socket) -> None:
        """The process has no file left for a new client: free one by closing an
        idle connection, or else accept the waiting client with a file kept in
        reserve for this and close it at once, so it is told rather than left in
        the backlog. Then wait a moment rather than spin."""
        self.out_of_files += 1
        self._report()
        if self._evict_one():
            return
        if self._reserve is not None:
            os.close(self._reserve)
            try:
                listener.accept()[0].close()
                self.refused += 1
            except OSError:
                pass
            self._reserve = _open_reserve()
        await trio.sleep(0.01)

    def _report(self) -> None:
        """A warning when clients are first refused, then at most one per
        REPORT_EVERY seconds with the counts since the last one."""
        now = trio.current_time()
        when, refused, out_of_files = self._reported
        if now - when < REPORT_EVERY:
            return
        log.warning(
            "%d open connections (cap %d): refused %d new clients, ran out of files %d times since the last report",
            len(self.connections), self.cap, self.refused - refused, self.out_of_files - out_of_files,
        )
        self._reported = (now, self.refused, self.out_of_files)

    async def reap(self) -> None:
        """Drop the connections whose deadline has passed."""
        period = min(0.5, self.limits.header_timeout / 4, self.limits.idle_timeout / 4)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for connection in list(self.connections):
                connection.expire(now)


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _client_name(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "?"


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    limits: Limits = Limits(),
    *,
    task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `nursery.start(serve_http, ...)` returns the listeners."""
    trio_listeners = await trio.open_tcp_listeners(port, host=host)
    listeners = [Listener(socket.socket(fileno=listener.socket.detach())) for listener in trio_listeners]
    server = Server(handler, limits)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.reap)
            for listener in listeners:
                nursery.start_soon(server.accept_loop, listener.socket, nursery)
            task_status.started(listeners)
    finally:
        for listener in listeners:
            listener.socket.close()


def bound_port(listeners: list[Listener]) -> int:
    """The port the first listener bound (for servers started on port 0)."""
    return int(listeners[0].socket.getsockname()[1])
