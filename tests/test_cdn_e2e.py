"""The CDN end to end through the `chordcdn` command: node, origin and edge
processes on loopback, fetched over HTTP the way a user would, then stopped with
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import trio

from dht.identity import Role

from .processes import CHORDCDN, chordcdn, credential_flags, node_processes, read_ready_line



async def start(*args: str) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process([CHORDCDN, "--log-level", "WARNING", *args], stdout=subprocess.PIPE)
    address, _ = await read_ready_line(process, 20)
    return process, address


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_origin_nodes_and_two_edges_as_processes(tmp_path: Path) -> None:
    body = os.urandom(600_000)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "file.bin").write_bytes(body)
    processes: list[trio.Process] = []
    async with node_processes(3) as nodes:
        try:
            origin, origin_address = await start(
                "origin", "--root", str(tmp_path / "site"), "--listen", "127.0.0.1:0", "--dht", nodes[0].address,
                *credential_flags("origin", Role.CLIENT, "ring-"),
            )
            processes.append(origin)
            ports = [free_port(), free_port()]
            peers = ",".join(f"e{i}=http://127.0.0.1:{port}" for i, port in enumerate(ports))
            for index, port in enumerate(ports):
                edge, _ = await start(
                    "edge", "--listen", f"127.0.0.1:{port}", "--name", f"e{index}", "--origin", f"http://{origin_address}",
                    "--dht", nodes[index + 1].address, "--peers", peers, "--disk-cache", f"{tmp_path}/disk{index}:64MiB",
                    *credential_flags(f"edge-{index}", Role.READER, "ring-"),
                )
                processes.append(edge)
            async with httpx.AsyncClient(timeout=20) as client:
                statuses = []
                for port in (*ports, *ports):
                    response = await client.get(f"http://127.0.0.1:{port}/file.bin")
                    assert response.status_code == 200 and response.content == body
                    statuses.append(response.headers.get_list("cache-status")[-1])
                assert any("hit" in status for status in statuses)
                cid = response.headers["x-content-cid"]
                ranged = await client.get(f"http://127.0.0.1:{ports[0]}/cid/{cid}", headers={"Range": "bytes=10-19"})
                assert ranged.status_code == 206 and ranged.content == body[10:20]
                metrics = await client.get(f"http://127.0.0.1:{ports[0]}/metrics")
                assert "chordcdn_edge_requests_total" in metrics.text
            for process in processes:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                for process in processes:
                    assert await process.wait() == 0
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()


async def test_edge_and_origin_refuse_bad_arguments(tmp_path: Path) -> None:
    bad = await chordcdn("edge", "--listen", "127.0.0.1:0", "--name", "e", "--origin", "ftp://x")
    assert bad.returncode == 2 and b"http://" in bad.stderr
    size = await chordcdn("edge", "--listen", "127.0.0.1:0", "--name", "e", "--origin", "http://x", "--mem-cache", "12parsecs")
    assert size.returncode == 2 and b"unit" in size.stderr
    missing = await chordcdn("origin", "--root", str(tmp_path / "nope"), "--listen", "127.0.0.1:0")
    assert missing.returncode == 2
