"""Running `chordcdn` processes from tests: start nodes, run commands, wait for a
consistent ring. Every wait has a deadline. Every process runs with certificates
from one throwaway cluster CA (`PKI`), as a deployment would: nodes with node
certificates, commands with a client certificate."""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import trio

from dht.identity import Role
from tools.cluster import LocalCluster

CHORDCDN = shutil.which("chordcdn", path=os.path.dirname(sys.executable)) or "chordcdn"
READY = re.compile(r"listening on (127\.0\.0\.1:\d+)")
NODE_FLAGS = ["--stabilize-interval", "0.2", "--rpc-timeout", "0.5"]


_names = itertools.count()


@cache
def pki() -> LocalCluster:
    """The test session's cluster CA, made on first use and removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="chordcdn-test-pki-"))
    atexit.register(shutil.rmtree, directory, True)
    return LocalCluster(directory)


def credential_flags(name: str, role: Role, prefix: str = "") -> list[str]:
    """--cert/--key/--ca (with `prefix`, e.g. "ring-") for NAME's certificate."""
    return pki().flags(name, role, prefix)


def client_environment(name: str = "test-client", role: Role = Role.CLIENT) -> dict[str, str]:
    """This process's environment plus CHORDCDN_CERT/KEY/CA for NAME."""
    files = pki().files(name, role)
    return {**os.environ, "CHORDCDN_CERT": str(files.cert), "CHORDCDN_KEY": str(files.key), "CHORDCDN_CA": str(files.ca)}


class NodeProcess:
    def __init__(self, process: trio.Process, address: str, output: bytes, name: str) -> None:
        self.process, self.address, self.output, self.name = process, address, output, name


async def start_node(join: str | None = None, listen: str = "127.0.0.1:0", *extra: str, name: str | None = None) -> NodeProcess:
    """A `chordcdn node` process with the node certificate NAME (a new one unless
    given: pass a stopped node's name to restart it with its ring ID)."""
    name = name or f"node-{next(_names)}"
    command = [CHORDCDN, "--log-level", "WARNING", "node", "--listen", listen, *NODE_FLAGS, *credential_flags(name, Role.NODE), *extra]
    if join:
        command += ["--join", join]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    address, output = await read_ready_line(process, 15)
    return NodeProcess(process, address, output, name)


async def read_ready_line(process: trio.Process, timeout: float, describe: Callable[[], str] = str) -> tuple[str, bytes]:
    """Wait for a node's "listening on ADDRESS" line: (ADDRESS, what it printed).
    `describe()` adds to the error if the node exits first."""
    output = b""
    with trio.fail_after(timeout):
        while b"\n" not in output:
            chunk = await process.stdout.receive_some(4096)  # type: ignore[union-attr]
            if not chunk:
                raise AssertionError(f"node exited before it was ready: {output!r} {describe()}")
            output += chunk
    line = output.decode().splitlines()[0]
    listening = READY.search(line)
    assert listening, line
    return listening.group(1), output


@asynccontextmanager
async def node_processes(count: int, extra: list[list[str]] | None = None) -> AsyncIterator[list[NodeProcess]]:
    """`count` nodes, the first founding the ring; extra[i] adds flags to node i.
    The list may be extended (restarts); every process in it is killed at the end."""
    nodes: list[NodeProcess] = []
    flags = extra or [[] for _ in range(count)]
    try:
        nodes.append(await start_node(None, "127.0.0.1:0", *flags[0]))
        for index in range(1, count):
            nodes.append(await start_node(nodes[0].address, "127.0.0.1:0", *flags[index]))
        yield nodes
    finally:
        await kill_all(nodes)


async def kill_all(nodes: Sequence[NodeProcess]) -> None:
    """SIGKILL every node still running and reap them (at most 5 s)."""
    for node in nodes:
        if node.process.returncode is None:
            node.process.kill()
    with trio.move_on_after(5):
        for node in nodes:
            await node.process.wait()


async def chordcdn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run one `chordcdn` command with a client certificate (or `env`'s)."""
    with trio.fail_after(30):
        return await trio.run_process(
            [CHORDCDN, *args], capture_stdout=True, capture_stderr=True, check=False, env=env or client_environment()
        )


async def check_passes_within(via: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        while True:
            result = await chordcdn("ring", "--via", via, "--check")
            if result.returncode == 0:
                return result
            await trio.sleep(0.2)
