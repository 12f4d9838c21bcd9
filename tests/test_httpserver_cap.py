"""The server's connection cap and send deadline, in process: the idle connection
that waited longest is closed first near the cap, at the cap with nobody idle a new
client is accepted and closed at once rather than left waiting in the backlog, and
a slow reader keeps its connection while it takes bytes but not once it stops."""

from __future__ import annotations

import functools
import socket

import trio

from edge.httpserver import Limits, Request, Response, bound_port, serve_http


class Gate:
    """A handler whose /slow requests wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.waiting = 0

    async def handle(self, request: Request) -> Response:
        if request.path == "/slow":
            self.waiting += 1
            await self.open.wait()
        if request.path == "/big":
            return Response(200, [], BIG_BODY)
        return Response(200, [], b"ok")


BIG_BODY = b"x" * (8 << 20)


async def start(nursery: trio.Nursery, gate: Gate, cap: int = 64, limits: Limits | None = None) -> int:
    limits = limits or Limits(max_connections=cap)
    listeners = await nursery.start(functools.partial(serve_http, gate.handle, "127.0.0.1", 0, limits))
    return bound_port(listeners)


async def closed_by_server(stream: trio.SocketStream, within: float = 5.0) -> bool:
    with trio.fail_after(within):
        try:
            return await stream.receive_some(1024) == b""
        except trio.BrokenResourceError:
            return True


async def still_open(stream: trio.SocketStream) -> bool:
    """Answered on request: the connection is alive (it answers a GET)."""
    await stream.send_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
    with trio.fail_after(5):
        return (await stream.receive_some(1024)).startswith(b"HTTP/1.1 200")


async def test_at_the_cap_with_nobody_idle_a_new_client_is_closed_at_once(nursery: trio.Nursery) -> None:
    gate = Gate()
    port = await start(nursery, gate, cap=4)
    busy = []
    for count in range(1, 5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        busy.append(stream)
        with trio.fail_after(5):
            while gate.waiting < count:  # inside its request, so never idle
                await trio.sleep(0.01)
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    assert await closed_by_server(extra, within=1.0), "the fifth client must be closed at once"
    gate.open.set()
    for stream in busy:
        with trio.fail_after(5):
            assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 200")
    fresh = await trio.open_tcp_stream("127.0.0.1", port)
    assert await still_open(fresh), "once requests finish, new clients are served again"


async def test_near_the_cap_the_longest_idle_connection_makes_room(nursery: trio.Nursery) -> None:
    gate = Gate()
    port = await start(nursery, gate, cap=10)  # eviction starts at 9 open
    idle = []
    for _ in range(9):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await still_open(stream)  # served, so admitted, and now idle in this order
        idle.append(stream)
    newcomer = await trio.open_tcp_stream("127.0.0.1", port)
    assert await still_open(newcomer), "the new client is served"
    assert await closed_by_server(idle[0]), "the connection idle the longest was closed to make room"
    for stream in idle[1:]:
        assert await still_open(stream), "only one idle connection is closed per new client"



async def _read_big(port: int, pause: float, reads: int) -> int:
    """Ask for /big (8 MiB, more than the kernel buffers on both sides) through a
    small receive buffer: read 16 KiB every `pause` seconds `reads` times, then read
    on at full speed until the server closes. Returns the body bytes received."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await stream.socket.connect(("127.0.0.1", port))
    await stream.send_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    received = bytearray()
    with trio.fail_after(30):
        for _ in range(reads):
            await trio.sleep(pause)
            received += await stream.receive_some(16384)
        try:
            while chunk := await stream.receive_some(1 << 20):
                received += chunk
        except trio.BrokenResourceError:
            pass
    return len(received) - received.index(b"\r\n\r\n") - 4


async def test_a_slow_reader_keeps_its_answer_while_it_takes_bytes_and_is_dropped_when_it_stops(nursery: trio.Nursery) -> None:
    port = await start(nursery, Gate(), limits=Limits(send_timeout=1.0))
    steady = await _read_big(port, pause=0.3, reads=12)  # 3.6 s in all, never 1 s without taking bytes
    assert steady == len(BIG_BODY), "a client that keeps reading gets the whole answer, however long it takes"
    stalled = await _read_big(port, pause=3.0, reads=1)  # takes nothing for 3 s
    assert stalled < len(BIG_BODY), "a client that stopped reading was dropped, not sent the whole answer"
