"""Attacking real `chordcdn node` processes from outside, as a host on the same
network would, and checking what the attack cost (not collected: no `test_` prefix).

Nodes run with their stderr kept in a file (`LoggedNode.log_text`), so a test can
read what the node logged about the attack. `RawConnection` is a blocking socket,
plain or TLS with any certificate (or none), that speaks hand-built frames; run it
in a worker thread (`trio.to_thread.run_sync`) from a trio test. Every read has a
deadline. `assert_survived` closes an attack: the process runs, `chordcdn ring
--check` passes, no traceback was logged, and a file put before the attack reads
back whole through `chordcdn get`.

Keep this module small and additive: other attack test files use it too.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import struct
import subprocess
import time
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, AsyncIterator

import msgpack
import trio

from dht.client import DhtClient
from dht.errors import ProtocolError
from dht.identity import Role
from dht.messages import NodeInfo
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials, TlsFiles
from dht.wire import FrameDecoder, unpack
from tools.cluster import LocalCluster
from tools.ringwalk import ring_problems, walk

from .processes import CHORDCDN, NODE_FLAGS, NodeProcess, check_passes_within, chordcdn, kill_all, pki, read_ready_line

WAIT = 10.0  # bound on any single wait for a reply or a close
CLOSED = object()  # what RawConnection.receive returns once the peer has closed
_names = itertools.count()


# -- node processes with their logs ------------------------------------------------------


class LoggedNode(NodeProcess):
    """A node process whose stderr goes to `log`."""

    def __init__(self, process: trio.Process, address: str, output: bytes, name: str, log: Path) -> None:
        super().__init__(process, address, output, name)
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.returncode is None and self.process.poll() is None


async def start_logged_node(
    log_dir: Path, join: str | None = None, *extra: str, name: str | None = None, cluster: LocalCluster | None = None
) -> LoggedNode:
    """`processes.start_node`, with stderr kept in LOG_DIR/NAME.log and credentials
    from `cluster` (default: the test session's `pki()`)."""
    name = name or f"attacked-{os.getpid()}-{next(_names)}"
    log = log_dir / f"{name}.log"
    flags = (cluster or pki()).flags(name, Role.NODE)
    command = [CHORDCDN, "--log-level", "WARNING", "node", "--listen", "127.0.0.1:0", *NODE_FLAGS, *flags, *extra]
    if join:
        command += ["--join", join]
    with open(log, "wb") as stderr:
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=stderr)
    try:
        address, output = await read_ready_line(process, 20, log.read_text)
    except BaseException:
        process.kill()
        raise
    return LoggedNode(process, address, output, name, log)


@asynccontextmanager
async def logged_ring(log_dir: Path, count: int = 2) -> AsyncIterator[list[LoggedNode]]:
    """`count` logged nodes (the first founds the ring, the rest join it at once),
    checked consistent; every process in the list is killed at the end."""
    nodes: list[LoggedNode] = []
    try:
        nodes.append(await start_logged_node(log_dir))

        async def join() -> None:
            nodes.append(await start_logged_node(log_dir, nodes[0].address))

        async with trio.open_nursery() as nursery:
            for _ in range(count - 1):
                nursery.start_soon(join)
        await wait_consistent(nodes[0].address, count)
        yield nodes
    finally:
        await stop_all(nodes)


async def stop_all(nodes: list[LoggedNode]) -> None:
    await kill_all(nodes)


# -- a well-behaved client in this process ----------------------------------------------------


def client_credentials(name: str = "test-client", role: Role = Role.CLIENT) -> TlsCredentials:
    return pki().credentials(name, role)


async def node_info(address: str, credentials: TlsCredentials | None = None) -> NodeInfo:
    """What the node at `address` reports through `info`, asked with a client certificate."""
    async with open_tcp_transport(None, tls=credentials or client_credentials()) as client:
        return NodeInfo.from_wire(await client.call(address, "info", [], timeout=WAIT))


async def wait_consistent(via: str, count: int, timeout: float = 20.0) -> None:
    """Poll (in this process, as `ring --check` does) until `count` nodes form a consistent ring."""
    async with open_tcp_transport(None, tls=client_credentials()) as client:
        with trio.fail_after(timeout):
            while True:
                view = await walk(client, via)
                if len(view.nodes) == count and not ring_problems(view):
                    return
                await trio.sleep(0.1)


async def put_bytes(via: str, content: bytes) -> str:
    """Store `content` as a file through the node at `via`; its CID."""
    async with open_tcp_transport(None, tls=client_credentials()) as transport:
        with trio.fail_after(30):
            client = await DhtClient.via(transport, via)
            return await client.put_file(BytesIO(content), chunk_size=64 * 1024)


async def assert_survived(node: LoggedNode, cid: str, content: bytes, via: str | None = None) -> None:
    """The attacked node still runs, `chordcdn ring --check` passes through it, the
    file put before the attack reads back whole with `chordcdn get` (through `via`,
    default the node itself), and the node logged no traceback."""
    assert node.alive(), f"{node.address} exited with {node.process.returncode}:\n{node.log_text()[-3000:]}"
    got: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def get() -> None:
        got["get"] = await chordcdn("get", cid, "--via", via or node.address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(check_passes_within, node.address)
        nursery.start_soon(get)
    assert got["get"].returncode == 0, got["get"].stderr
    assert got["get"].stdout == content, "the file came back different"
    assert node.alive()
    assert "Traceback" not in node.log_text(), node.log_text()[-3000:]


async def wait_for_log(node: LoggedNode, needle: str, timeout: float = WAIT) -> str:
    """The first line of the node's log that contains `needle`, polling until it appears."""
    with trio.fail_after(timeout):
        while True:
            for line in node.log_text().splitlines():
                if needle in line:
                    return line
            await trio.sleep(0.05)


# -- raw sockets ------------------------------------------------------------------------------


def client_context(files: TlsFiles | None, verify_server: bool = True) -> ssl.SSLContext:
    """TLS 1.3 as an attacker's client: with `files`' certificate, or none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    if verify_server and files is not None:
        context.load_verify_locations(cafile=str(files.ca))
    else:
        context.verify_mode = ssl.CERT_NONE
    if files is not None:
        context.load_cert_chain(str(files.cert), str(files.key))
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 as a fake peer's server: `files`' certificate, a client certificate required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    return context


def frame_of(payload: bytes) -> bytes:
    """A length-prefixed frame around arbitrary payload bytes."""
    return struct.pack(">I", len(payload)) + payload


def packed(value: Any) -> bytes:
    """Plain msgpack (ExtType passes through; ints must fit 64 bits)."""
    return msgpack.packb(value, use_bin_type=True)


def raw_array(*items: bytes) -> bytes:
    """A msgpack array of at most 15 already-encoded items."""
    assert len(items) <= 15
    return bytes([0x90 | len(items)]) + b"".join(items)


def nested(depth: int, leaf: bytes = b"\xc0") -> bytes:
    """`depth` one-element arrays around `leaf`, as msgpack bytes (past any packer's limit)."""
    return b"\x91" * depth + leaf


def wide_integer(value: int) -> msgpack.ExtType:
    """An integer as the wire carries wide ones (extension type 1, big-endian two's
    complement), however long: past the 40 bytes a node accepts."""
    return msgpack.ExtType(1, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def long_integer(digits: int = 2000, sign: int = 1) -> msgpack.ExtType:
    """A `digits`-digit integer (of `sign`) on the wire."""
    return wide_integer(sign * (10 ** (digits - 1) + 7))


class RawConnection:
    """A blocking socket to a node, plain or TLS, with a frame decoder on the
    receiving side. A closed, reset or TLS-alerted connection reads as CLOSED."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.closed = False

    @classmethod
    def open(cls, address: str, context: ssl.SSLContext | None = None, timeout: float = WAIT) -> "RawConnection":
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        if context is not None:
            sock = context.wrap_socket(sock)  # the client's side of the handshake, bounded by the timeout
        return cls(sock)

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> bool:
        """Send bytes; False when the peer has already closed."""
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            self.closed = True
            return False

    def receive(self, timeout: float = WAIT) -> Any:
        """The next message (msgpack-decoded), or CLOSED. Fails (TimeoutError) when
        neither comes within `timeout`."""
        deadline = time.monotonic() + timeout
        while (payload := self.decoder.next_payload()) is None:
            if self.closed:
                return CLOSED
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                raise TimeoutError(f"neither a reply nor a close within {timeout} s") from None
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                return CLOSED
            self.decoder.feed(data)
        try:
            return unpack(payload)
        except ProtocolError as exc:
            raise AssertionError(f"the node sent a frame that is not msgpack: {exc}") from None

    def drain(self, timeout: float = WAIT) -> list[Any]:
        """Every message until the node closes the connection (fails past `timeout`)."""
        deadline = time.monotonic() + timeout
        messages = []
        while (message := self.receive(deadline - time.monotonic())) is not CLOSED:
            messages.append(message)
        return messages

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
