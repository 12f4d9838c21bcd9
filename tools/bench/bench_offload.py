"""Origin offload under a cold storm: how many body bytes the origin sends when many
clients ask three cold edges for the same objects at once.

Starts `chordcdn origin` over a generated site and three `chordcdn edge` processes
that know each other (no DHT, so every body that reaches an edge comes from the
origin or another edge), then fires `--clients` concurrent requests spread over the
edges and objects. Reports origin body bytes ÷ unique object bytes (bar ≤ 1.05),
read from the edges' /metrics, and the wall time. Each round uses fresh object
names, so every round starts cold.

    python -m tools.bench.bench_offload [--objects 8] [--size 10MiB] [--clients 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import httpx
import trio

from tools.argtypes import byte_size

from .httpbench import Child, child_process, free_port

CHORDCDN = str(Path(sys.executable).with_name("chordcdn"))
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
ORIGIN_BYTES = re.compile(r'^chordcdn_edge_origin_bytes_total\{edge="[^"]+"\} (\S+)$', re.M)


def start_cluster(stack: ExitStack, root: Path, logs: Path) -> list[int]:
    origin = stack.enter_context(child_process([CHORDCDN, "--log-level", "WARNING", "origin", "--root", str(root), "--listen", "127.0.0.1:0"], "origin", log_dir=logs))
    origin_port = int(origin.wait_for_line(LISTENING).group(1))
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"e{i}=http://127.0.0.1:{port}" for i, port in enumerate(ports))
    edges: list[Child] = []
    for index, port in enumerate(ports):
        argv = [CHORDCDN, "--log-level", "WARNING", "edge", "--listen", f"127.0.0.1:{port}", "--name", f"e{index}",
                "--origin", f"http://127.0.0.1:{origin_port}", "--peers", peers, "--mem-cache", "1GiB"]
        edges.append(stack.enter_context(child_process(argv, f"edge-{index}", log_dir=logs)))
    for edge, port in zip(edges, ports):
        edge.wait_for_http("127.0.0.1", port, "/metrics")
    return ports


async def storm(ports: list[int], paths: list[str], clients: int) -> float:
    """Every client asks one edge for one object, all at once; return seconds."""
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(index: int) -> None:
            url = f"http://127.0.0.1:{ports[index % len(ports)]}{paths[index % len(paths)]}"
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}")
                async for _ in response.aiter_raw():
                    pass

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                nursery.start_soon(one, index)
        return time.perf_counter() - started


def origin_bytes(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        total += sum(float(value) for value in ORIGIN_BYTES.findall(text))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--size", type=byte_size, default=10 * 1024 * 1024)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as scratch, ExitStack() as stack:
        root, logs = Path(scratch) / "site", Path(scratch) / "logs"
        root.mkdir()
        logs.mkdir()
        for round_index in range(args.rounds):
            for index in range(args.objects):
                (root / f"r{round_index}-{index}.bin").write_bytes(bytes([index % 256]) * args.size)
        ports = start_cluster(stack, root, logs)
        ratios, seconds = [], []
        before = origin_bytes(ports)
        for round_index in range(args.rounds):
            paths = [f"/r{round_index}-{index}.bin" for index in range(args.objects)]
            seconds.append(trio.run(storm, ports, paths, args.clients))
            after = origin_bytes(ports)
            ratios.append((after - before) / (args.objects * args.size))
            before = after
            print(f"round {round_index + 1}: origin bytes / unique bytes = {ratios[-1]:.3f}, {seconds[-1]:.2f} s", flush=True)
    median = statistics.median(ratios)
    served = args.clients * args.size / statistics.median(seconds) / 1e6
    print(f"\ncold storm: {args.clients} clients, {args.objects} objects of {args.size / 2**20:g} MiB over 3 edges")
    print(f"origin offload: median origin bytes / unique bytes = {median:.3f} (bar ≤ 1.05: {'met' if median <= 1.05 else 'NOT met'})")
    print(f"median storm time {statistics.median(seconds):.2f} s, {served:.0f} MB/s to clients")
    return 0 if median <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
