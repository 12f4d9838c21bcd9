"""Every copy of one block lost, end to end through `chordcdn` processes.

Four nodes keep their blocks on disk (r = 3), an origin publishes a 4 MiB file
and checks the ring every few seconds, an edge reads bodies from the ring. Then
one leaf of the file (not the root) rots on every disk that holds it: the test
flips bytes inside that block's record in each node's segment files, from
outside, as a failing disk would, so every read of it fails verification and
the node drops it. Through the edge, the path and /cid/ must still give the
whole, correct body (the edge finishes from the origin with a Range request
conditioned on the CID), and after the origin's next availability check the
ring must hold the block again, read back byte-exact with `chordcdn get`.

Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import httpx
import trio

from dht.identity import Role
from dht.merkle import DEFAULT_CHUNK, block_hash

from .availkit import dag_blocks, intact_copies, rot, servers, stop_cleanly
from .processes import CHORDCDN, check_passes_within, chordcdn, credential_flags, node_processes, read_ready_line
from .test_tcp_ring import eventually

BODY = random.Random(2024).randbytes(4 * 1024 * 1024)
LOST_LEAF = 9  # 2,359,296 bytes in, where issue 12's truncated 200s stopped
CHECK_INTERVAL = "3"  # seconds: time for the edge to meet the loss before the origin heals it


async def start_logged(log: Path, *args: str) -> tuple[trio.Process, str]:
    """A `chordcdn` server logging at INFO into `log`; (process, its address)."""
    with open(log, "wb") as errors:
        command = [CHORDCDN, "--log-level", "INFO", *args]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=errors)
    address, _ = await read_ready_line(process, 20, lambda: log.read_text()[-2000:])
    return process, address


def passes_since(log: Path, marker: str) -> int:
    """How many availability passes ended after the first log line containing `marker`."""
    text = log.read_text()
    start = text.find(marker)
    return -1 if start < 0 else text.count("availability check:", start)


def summary(outcome: httpx.Response | Exception) -> str:
    """What a fetch gave, short enough for an assertion message."""
    if isinstance(outcome, Exception):
        return f"{type(outcome).__name__}: {outcome}"
    return f"{outcome.status_code}, {len(outcome.content)} bytes, sha256 {hashlib.sha256(outcome.content).hexdigest()[:16]}"


async def fetch(http: httpx.AsyncClient, url: str) -> httpx.Response | Exception:
    try:
        return await http.get(url)
    except httpx.HTTPError as exc:  # a truncated body is a protocol error
        return exc


async def test_a_block_lost_from_every_holder_is_served_whole_and_put_back(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "big.bin").write_bytes(BODY)
    blocks, root = dag_blocks(BODY)
    cid, lost = root.hex(), block_hash(BODY[LOST_LEAF * DEFAULT_CHUNK : (LOST_LEAF + 1) * DEFAULT_CHUNK])
    assert lost in {block_hash(block) for block in blocks} and lost != root
    disks = [tmp_path / f"node{index}" for index in range(4)]
    async with node_processes(4, [["--data", str(disk), "--replicas", "3"] for disk in disks]) as nodes, servers() as processes:
        await check_passes_within(nodes[0].address)
        origin_log = tmp_path / "origin.log"
        origin, origin_address = await start_logged(
            origin_log, "origin", "--root", str(tmp_path / "site"), "--listen", "127.0.0.1:0", "--dht", nodes[0].address,
            "--check-interval", CHECK_INTERVAL, "--check-rate", "256MiB", *credential_flags("origin", Role.CLIENT, "ring-"),
        )
        processes.append(origin)
        edge, edge_address = await start_logged(
            tmp_path / "edge.log", "edge", "--listen", "127.0.0.1:0", "--name", "e0",
            "--origin", f"http://{origin_address}", "--dht", nodes[1].address,
            *credential_flags("edge-0", Role.READER, "ring-"),
        )
        processes.append(edge)
        await eventually(lambda: passes_since(origin_log, f"published /big.bin cid {cid}") >= 1, timeout=20)
        assert intact_copies(disks, lost) == 3

        # Right after a pass, the block rots on every disk that holds it.
        republished = f"republished block {lost.hex()} of /big.bin"
        assert rot(disks, lost) == 3 and intact_copies(disks, lost) == 0
        async with httpx.AsyncClient(base_url=f"http://{edge_address}", timeout=20) as http:
            by_cid = await fetch(http, f"/cid/{cid}")
            by_path = await fetch(http, "/big.bin")
        met_the_loss = republished not in origin_log.read_text()

        # The origin's next pass finds the block short and puts it back on every holder.
        await eventually(lambda: republished in origin_log.read_text(), timeout=20)
        assert intact_copies(disks, lost) == 3
        got = await chordcdn("get", cid, "--via", nodes[2].address, "-o", str(tmp_path / "read-back.bin"))
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "read-back.bin").read_bytes() == BODY

        # Meanwhile the edge gave the whole body both ways, before the origin had healed the ring.
        assert met_the_loss, "the origin healed the ring before the edge was asked; raise CHECK_INTERVAL"
        whole = f"200, {len(BODY)} bytes, sha256 {hashlib.sha256(BODY).hexdigest()[:16]}"
        assert summary(by_cid) == whole, (summary(by_cid), (tmp_path / "edge.log").read_text()[-3000:])
        assert summary(by_path) == whole, (summary(by_path), (tmp_path / "edge.log").read_text()[-3000:])
        assert isinstance(by_path, httpx.Response) and by_path.headers["etag"] == f'"{cid}"'

        await stop_cleanly(processes)
