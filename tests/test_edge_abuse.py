"""A real `chordcdn edge` process attacked from outside the way an abusive client
would: thousands of idle sockets under a 1,024-file limit, a body trickled a byte at
a time, a client that never reads, a hundred large uploads at once, and requests
the edge must refuse or ignore correctly. Each test counts what got through."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import trio

from edge.httpserver import Request, Response, bound_port, serve_http

from .processes import CHORDCDN, read_ready_line

BIG = 8 * 1024 * 1024
UPLOAD = 15 * 1024 * 1024
PATTERN = os.urandom(1 << 16)


@dataclass
class UploadOrigin:
    """An origin that answers GETs from a few fixed objects and counts every byte
    of every upload it is sent, with the fields it saw."""

    port: int = 0
    received: int = 0
    uploads: int = 0
    seen_fields: list[list[tuple[str, str]]] | None = None

    async def handle(self, request: Request) -> Response:
        if request.method in ("POST", "PUT"):
            digest, size = hashlib.sha256(), 0
            async for chunk in request.body:
                digest.update(chunk)
                size += len(chunk)
            self.received += size
            self.uploads += 1
            (self.seen_fields if self.seen_fields is not None else []).append(request.headers.items())
            return Response(200, [("Content-Type", "application/json")], json.dumps({"size": size, "sha256": digest.hexdigest()}).encode())
        if request.path == "/big":
            return Response(200, [("Cache-Control", "max-age=600")], PATTERN * (BIG // len(PATTERN)))
        return Response(200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/plain")], b"small object\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class EdgeProcess:
    process: trio.Process
    address: str
    log: Path

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@asynccontextmanager
async def edge_process(origin: UploadOrigin, log: Path, *flags: str, file_limit: int | None = None) -> AsyncIterator[EdgeProcess]:
    command = [CHORDCDN, "--log-level", "INFO", "edge", "--listen", "127.0.0.1:0", "--name", "e1", "--origin", origin.url, "--access-log", "off", *flags]
    with open(log, "wb") as stderr:
        preexec = functools.partial(_limit_files, file_limit) if file_limit else None
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=stderr, preexec_fn=preexec)
    try:
        address, _ = await read_ready_line(process, 20, lambda: log.read_text()[-2000:])
        yield EdgeProcess(process, address, log)
        assert process.poll() is None, f"the edge died: {log.read_text()[-3000:]}"
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.poll() is None:
            process.kill()


@pytest.fixture
async def origin(nursery: trio.Nursery) -> UploadOrigin:
    served = UploadOrigin(seen_fields=[])
    listeners = await nursery.start(functools.partial(serve_http, served.handle, "127.0.0.1", 0))
    served.port = bound_port(listeners)
    return served


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def _raw_exchange(address: str, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the edge closes (or `timeout`)."""
    stream = await trio.open_tcp_stream(*_split(address))
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.move_on_after(timeout):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def _timed_get(client: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    response = await client.get(url)
    assert response.status_code == 200 and response.content == b"small object\n"
    return time.perf_counter() - started


async def test_two_thousand_idle_sockets_under_a_1024_file_limit_lock_nobody_out(origin: UploadOrigin, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4200:
        pytest.skip(f"the test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle: list[socket.socket] = []
    try:
        async with edge_process(origin, tmp_path / "edge.log", file_limit=1024) as edge:
            async with httpx.AsyncClient(timeout=10) as warm:
                await _timed_get(warm, f"http://{edge.address}/small")  # the object is cached now
            for _ in range(2000):
                idle.append(socket.create_connection(_split(edge.address)))
            latencies = []
            for _ in range(9):
                async with httpx.AsyncClient(timeout=5) as fresh:  # a new connection each time
                    latencies.append(await _timed_get(fresh, f"http://{edge.address}/small"))
            closed = sum(1 for sock in idle if _closed_by_peer(sock))
        log = edge.log.read_text()
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert statistics.median(latencies) < 0.1, f"a new client waited {latencies}"
    assert max(latencies) < 1.0, f"a new client waited {latencies}"
    assert closed >= 2000 - 1024, f"only {closed} of 2000 idle sockets were closed to make room"
    storm = [line for line in log.splitlines() if "EMFILE" in line or "Too many open files" in line or "open connections (cap" in line]
    assert len(storm) <= 3, f"{len(storm)} lines about the file limit:\n" + "\n".join(storm[:10])


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def test_a_trickled_body_and_a_client_that_never_reads_are_dropped_at_their_deadlines(origin: UploadOrigin, tmp_path: Path) -> None:
    async with edge_process(origin, tmp_path / "edge.log", "--send-timeout", "4") as edge:
        async with httpx.AsyncClient(timeout=10) as client:
            assert len((await client.get(f"http://{edge.address}/big")).content) == BIG  # cached now
        received, dropped_after = await _never_read(edge)
        trickled_for = await _trickle(edge.address)
        wanted = ("its request body came too slowly", "it stopped reading the response")
        with trio.move_on_after(5):  # the edge logs a drop just after the client sees the close
            while not all(line in edge.log.read_text() for line in wanted):
                await trio.sleep(0.05)
        log = edge.log.read_text()
    assert received < BIG, "a client that never read got the whole body"
    assert 3.5 <= dropped_after <= 7, f"the client that never read was dropped after {dropped_after:.1f}s (send timeout 4 s)"
    assert 9.5 <= trickled_for <= 14, f"the trickled body was dropped after {trickled_for:.1f}s (body timeout 10 s)"
    assert all(line in log for line in wanted), log
    assert origin.uploads == 0, "a body that never arrived must not reach the origin whole"


async def _trickle(address: str) -> float:
    """One byte every 5 s of a 100-byte body, until the edge closes; how long it took."""
    stream = await trio.open_tcp_stream(*_split(address))
    async with stream:
        started = trio.current_time()
        await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: e\r\nContent-Length: 100\r\n\r\n")
        with trio.fail_after(30):
            while True:
                try:
                    await stream.send_all(b"x")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(5):  # the client's own pace: a byte every 5 s
                    if await _closed(stream):
                        break
        return trio.current_time() - started


async def _closed(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(65536) == b""  # any answer is followed by the close
    except trio.BrokenResourceError:
        return True


def _edge_holds(edge: EdgeProcess, client_port: int) -> bool:
    """Does the edge process still hold its end of the connection from `client_port`?
    Its socket is found in /proc/net/tcp by the two ports, then among the process's
    open files by its inode."""
    edge_port = int(edge.address.rsplit(":", 1)[1])
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (edge_port, client_port) and fields[9] != "0":
            inodes.add(f"socket:[{fields[9]}]")
    held = set()
    for fd in os.listdir(f"/proc/{edge.process.pid}/fd"):
        try:
            held.add(os.readlink(f"/proc/{edge.process.pid}/fd/{fd}"))
        except OSError:
            pass
    return bool(inodes & held)


async def _never_read(edge: EdgeProcess) -> tuple[int, float]:
    """GET an 8 MiB object with a tiny receive buffer and read nothing. The edge's
    close cannot reach a client that does not read, so the drop is seen from the
    edge's open files; then read what is there and see the connection end.
    Returns the bytes received and when the edge let go of the connection."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(_split(edge.address))
    client_port = sock.getsockname()[1]
    stream = trio.SocketStream(sock)
    async with stream:
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: e\r\n\r\n")
        started = trio.current_time()
        with trio.fail_after(15):
            while not _edge_holds(edge, client_port):  # until the edge has taken the connection
                await trio.sleep(0.01)
            while _edge_holds(edge, client_port):  # until it lets go of it
                await trio.sleep(0.1)
        dropped_after = trio.current_time() - started
        received = 0
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(65536):
                    received += len(chunk)
            except trio.BrokenResourceError:
                pass
    return received, dropped_after


async def test_a_hundred_15_mib_uploads_keep_the_edge_small_and_reach_the_origin_whole(origin: UploadOrigin, tmp_path: Path) -> None:
    async with edge_process(origin, tmp_path / "edge.log") as edge:
        peak = edge.rss_bytes()
        answers: list[dict[str, object]] = []

        async def upload() -> None:
            async with httpx.AsyncClient(timeout=120) as client:
                response = await client.post(f"http://{edge.address}/upload", content=_upload_body())
                assert response.status_code == 200, response.text
                answers.append(response.json())

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, edge.rss_bytes())
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as uploads:
                for _ in range(100):
                    uploads.start_soon(upload)
            nursery.cancel_scope.cancel()
    expected = hashlib.sha256(b"".join(_upload_pieces())).hexdigest()
    assert len(answers) == 100 and all(answer == {"size": UPLOAD, "sha256": expected} for answer in answers)
    assert origin.received == 100 * UPLOAD
    assert peak < 300 * 1024 * 1024, f"the edge reached {peak / 2**20:.0f} MiB"


def _upload_pieces() -> list[bytes]:
    return [PATTERN] * (UPLOAD // len(PATTERN))


async def _upload_body() -> AsyncIterator[bytes]:
    for piece in _upload_pieces():
        yield piece


async def test_connect_long_targets_h2c_and_trailers(origin: UploadOrigin, tmp_path: Path) -> None:
    async with edge_process(origin, tmp_path / "edge.log") as edge:
        connect = await _raw_exchange(edge.address, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert connect.startswith(b"HTTP/1.1 501 "), connect[:200]
        long = await _raw_exchange(edge.address, b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: e\r\n\r\n")
        assert long.startswith(b"HTTP/1.1 414 "), long[:200]
        h2c = await _raw_exchange(
            edge.address,
            b"GET /small HTTP/1.1\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        assert h2c.startswith(b"HTTP/1.1 200 ") and h2c.endswith(b"small object\n"), h2c[:300]
        trailers = await _raw_exchange(
            edge.address,
            b"POST /upload HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer-Field: smuggled\r\n\r\n",
        )
        assert trailers.startswith(b"HTTP/1.1 200 ") and b'"size": 5' in trailers, trailers[:300]
    assert origin.seen_fields and not any(name == "x-trailer-field" for name, _ in origin.seen_fields[-1])
