"""Storage end to end through the `chordcdn` command: real node processes with data
directories, `chordcdn put` and `chordcdn get`, restarts and bad input."""

from __future__ import annotations

import hashlib
import json
import random
import signal
from pathlib import Path

import trio

from .processes import check_passes_within, chordcdn, node_processes, start_node


def data_flags(tmp_path: Path, count: int) -> list[list[str]]:
    return [["--data", str(tmp_path / f"node{index}"), "--replicas", "3", "--repair-interval", "1"] for index in range(count)]


async def put(path: Path, via: str) -> str:
    result = await chordcdn("put", str(path), "--via", via, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["cid"]


async def test_put_get_and_ranges_through_the_command(tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    content = random.Random(1).randbytes(3 * 1024 * 1024 + 123)
    source.write_bytes(content)
    async with node_processes(4, data_flags(tmp_path, 4)) as nodes:
        await check_passes_within(nodes[0].address)
        cid = await put(source, nodes[1].address)
        assert cid == (await put(source, nodes[2].address))  # content-addressed: same file, same CID
        target = tmp_path / "out.bin"
        result = await chordcdn("get", cid, "--via", nodes[3].address, "-o", str(target))
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(content).digest()
        for spec, (start, end) in {"0-0": (0, 1), "262140-262150": (262140, 262151), "3000000-": (3000000, len(content))}.items():
            result = await chordcdn("get", cid, "--via", nodes[0].address, "--range", spec)
            assert result.returncode == 0, result.stderr
            assert result.stdout == content[start:end]


async def test_restart_with_the_same_data_directory_serves_the_blocks(tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    content = random.Random(2).randbytes(1024 * 1024)
    source.write_bytes(content)
    flags = data_flags(tmp_path, 3)
    async with node_processes(3, flags) as nodes:
        await check_passes_within(nodes[0].address)
        cid = await put(source, nodes[0].address)
        addresses = [node.address for node in nodes]
        names = [node.name for node in nodes]
        for node in nodes:  # every holder dies at once: only the disks remain
            node.process.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            for node in nodes:
                await node.process.wait()
        restarted = [await start_node(None, addresses[0], *flags[0], name=names[0])]
        for address, extra, name in zip(addresses[1:], flags[1:], names[1:]):
            restarted.append(await start_node(addresses[0], address, *extra, name=name))
        nodes.extend(restarted)
        assert all(b" blocks in " in node.output and b", 0 blocks" not in node.output for node in restarted)
        await check_passes_within(addresses[0])
        result = await chordcdn("get", cid, "--via", addresses[2])
        assert result.returncode == 0, result.stderr
        assert result.stdout == content


async def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    async with node_processes(2, data_flags(tmp_path, 2)) as nodes:
        await check_passes_within(nodes[0].address)
        via = nodes[0].address
        cases = [
            (["get", "ab" * 32, "--via", via], 2, b"not found"),
            (["get", "NOT-A-CID", "--via", via], 2, b"is not a CID"),
            (["get", "ab" * 32, "--via", via, "--range", "9-3"], 2, b"ends before it starts"),
            (["put", str(tmp_path / "missing.bin"), "--via", via], 2, b"no such file"),
            (["put", str(tmp_path), "--via", "127.0.0.1:1"], 2, b"no such file"),
            (["put", __file__, "--via", "127.0.0.1:1"], 3, b"cannot reach"),
            (["put", __file__, "--via", via, "--chunk-size", "0"], 2, b"must be 1.."),
        ]
        for args, code, message in cases:
            with trio.fail_after(30):  # "not found" comes back in bounded time
                result = await chordcdn(*args)
            assert result.returncode == code, (args, result.stderr)
            assert message in result.stderr, (args, result.stderr)
        small = tmp_path / "small.txt"
        small.write_bytes(b"still here")
        cid = await put(small, via)
        result = await chordcdn("get", cid, "--via", via, "--range", "100-200")
        assert result.returncode == 2 and b"does not fit" in result.stderr
        assert (await chordcdn("get", cid, "--via", via)).stdout == b"still here"
