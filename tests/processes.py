"""Running `chordcdn` processes from tests: start nodes, run commands, wait for a
consistent ring. Every wait has a deadline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

CHORDCDN = shutil.which("chordcdn", path=os.path.dirname(sys.executable)) or "chordcdn"
READY = re.compile(r"listening on (127\.0\.0\.1:\d+)")
NODE_FLAGS = ["--stabilize-interval", "0.2", "--rpc-timeout", "0.5"]


class NodeProcess:
    def __init__(self, process: trio.Process, address: str, output: bytes) -> None:
        self.process, self.address, self.output = process, address, output


async def start_node(join: str | None = None, listen: str = "127.0.0.1:0", *extra: str) -> NodeProcess:
    command = [CHORDCDN, "--log-level", "WARNING", "node", "--listen", listen, *NODE_FLAGS, *extra]
    if join:
        command += ["--join", join]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    output = b""
    with trio.fail_after(15):
        while b"\n" not in output:
            chunk = await process.stdout.receive_some(4096)  # type: ignore[union-attr]
            if not chunk:
                raise AssertionError(f"node exited before it was ready: {output!r}")
            output += chunk
    line = output.decode().splitlines()[0]
    listening = READY.search(line)
    assert listening, line
    return NodeProcess(process, listening.group(1), output)


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
        for node in nodes:
            if node.process.returncode is None:
                node.process.kill()
        with trio.move_on_after(5):
            for node in nodes:
                await node.process.wait()


async def chordcdn(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process([CHORDCDN, *args], capture_stdout=True, capture_stderr=True, check=False)


async def check_passes_within(via: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        while True:
            result = await chordcdn("ring", "--via", via, "--check")
            if result.returncode == 0:
                return result
            await trio.sleep(0.2)
