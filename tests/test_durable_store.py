"""A store that keeps what it acknowledged (issue 14): fsync before a put returns,
shared by concurrent puts; damage that costs one record; compaction that gives
space back and survives a SIGKILL at any step; thousands of segments under a low
file limit; and a scrubber that finds rot no client reads, for repair to mend."""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dht import records
from dht.identity import Role
from dht.ids import IdSpace
from dht.merkle import block_hash
from dht.segmentstore import DiskBlockStore
from dht.storage import StorageConfig
from dht.tcp import open_tcp_transport

from .conftest import ClusterFactory
from .processes import CHORDCDN, NODE_FLAGS, credential_flags, read_ready_line
from .test_tcp_ring import client_credentials

SPACE = IdSpace(256)


def block(serial: int, size: int = 2000) -> tuple[bytes, bytes]:
    body = (f"block {serial} ".encode() * (size // 8 + 1))[:size]
    return block_hash(body), body


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


# -- fsync before acknowledgement ---------------------------------------------------------------


class RecordingOs:
    """The `os` the store sees: every call passes through, and writes of records and
    fsyncs are logged in order."""

    def __init__(self, log: list[tuple[str, bytes]]) -> None:
        self._log = log

    def writev(self, fd: int, buffers: list[bytes]) -> int:
        self._log.append(("write", bytes(buffers[0][5:37])))  # the key, from the record header
        return os.writev(fd, buffers)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self._log.append(("fsync", b""))

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.mark.parametrize("policy", ["always", "never"])
async def test_no_put_is_acknowledged_before_its_record_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    events: list[tuple[str, bytes]] = []
    monkeypatch.setattr("dht.segmentstore.os", RecordingOs(events))
    store = DiskBlockStore(SPACE, tmp_path / "blocks", fsync=policy)

    async def put(serial: int) -> None:
        key, body = block(serial)
        await store.put(key, body)
        events.append(("ack", key))

    async with trio.open_nursery() as nursery:
        for serial in range(40):
            nursery.start_soon(put, serial)
    store.close()
    acks = [index for index, (kind, _) in enumerate(events) if kind == "ack"]
    assert len(acks) == 40
    fsyncs = [index for index, (kind, _) in enumerate(events) if kind == "fsync"]
    if policy == "never":
        assert fsyncs == []
        return
    for index in acks:
        key = events[index][1]
        written = events.index(("write", key))
        assert any(written < synced < index for synced in fsyncs), f"block {key.hex()[:8]} acknowledged before an fsync covered it"
    assert len(fsyncs) <= 4  # 40 concurrent puts shared their fsyncs (plus the directory's, and the close)
    assert store.commit.syncs <= 3


# -- damage costs one record --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "body", "tail"])
async def test_damage_in_a_segment_costs_exactly_the_damaged_record(tmp_path: Path, where: str) -> None:
    store = DiskBlockStore(SPACE, tmp_path / "blocks", fsync="never")
    written = [block(serial) for serial in range(300)]
    for key, body in written:
        await store.put(key, body)
    store.close()
    (segment,) = (tmp_path / "blocks").glob("*.seg")
    data = bytearray(segment.read_bytes())
    size = records.record_size(len(written[0][1]))
    victim = 299 if where == "tail" else 100
    if where == "header":
        data[victim * size + 40] ^= 0xFF  # inside the length field
    elif where == "body":
        data[victim * size + records.HEADER_SIZE + 7] ^= 0x01
    else:
        del data[-500:]
    segment.write_bytes(bytes(data))
    again = DiskBlockStore(SPACE, tmp_path / "blocks")
    assert len(again) == 299 and written[victim][0] not in again
    assert all(again.verified(key) == body for key, body in written if key != written[victim][0])
    counted = again.loaded.torn_tails if where == "tail" else again.loaded.damaged
    assert counted == 1
    again.close()


# -- compaction ---------------------------------------------------------------------------------------


async def filled_store(directory: Path, count: int = 120) -> tuple[dict[bytes, bytes], set[bytes]]:
    """A store over several small segments with every other block deleted: (live, deleted)."""
    store = DiskBlockStore(SPACE, directory, fsync="never")
    store.SEGMENT_LIMIT = 40_000
    live, deleted = {}, set()
    for serial in range(count):
        key, body = block(serial)
        await store.put(key, body)
        live[key] = body
    for serial in range(0, count, 2):
        key = block(serial)[0]
        await store.delete(key)
        deleted.add(key)
        del live[key]
    store.close()
    return live, deleted


def assert_holds_exactly(directory: Path, live: dict[bytes, bytes], deleted: set[bytes]) -> None:
    store = DiskBlockStore(SPACE, directory)
    try:
        assert set(store.keys()) == set(live)
        for key, body in live.items():
            assert store.verified(key) == body
        assert not deleted & set(store.keys())
    finally:
        store.close()


async def test_compaction_gives_back_dead_space_and_keeps_every_live_block(tmp_path: Path) -> None:
    directory = tmp_path / "blocks"
    live, deleted = await filled_store(directory)
    before = directory_bytes(directory)
    store = DiskBlockStore(SPACE, directory)
    reclaimed = await store.compact(0.3)
    store.close()
    after = directory_bytes(directory)
    assert reclaimed > 0 and after < 0.6 * before
    assert_holds_exactly(directory, live, deleted)


async def test_compaction_drops_a_rotten_copy_rather_than_give_it_a_fresh_checksum(tmp_path: Path) -> None:
    directory = tmp_path / "blocks"
    live, deleted = await filled_store(directory)
    store = DiskBlockStore(SPACE, directory)
    victim = next(iter(live))
    segment, offset, length = store._locations[victim]
    with open(store._path(segment), "r+b") as rotting:
        rotting.seek(offset + 10)
        rotting.write(b"rot")
    await store.compact(0.0)  # every sealed segment, the victim's among them
    assert victim not in store and store.corrupt_found == 1
    store.close()
    del live[victim]
    assert_holds_exactly(directory, live, deleted | {victim})


CRASHING_COMPACTION = """
import os, signal, sys, trio
import dht.segmentstore as segmentstore
from dht.ids import IdSpace

directory, step, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
counts = {"writev": 0, "unlink": 0}

class Crashing:
    def __getattr__(self, name):
        call = getattr(os, name)
        if name not in counts:
            return call
        def crash_after(*args):
            result = call(*args)
            counts[name] += 1
            if name == step and counts[name] == after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return crash_after

store = segmentstore.DiskBlockStore(IdSpace(256), directory, fsync="never")
segmentstore.os = Crashing()
trio.run(store.compact, 0.3)
"""


async def test_a_sigkill_at_any_step_of_compaction_loses_no_live_block(tmp_path: Path) -> None:
    """Killed after each record copied, and after each old segment removed: every
    live block is still there afterwards, and no deleted one came back."""
    original = tmp_path / "original"
    live, deleted = await filled_store(original)
    steps = [("writev", n) for n in (1, 2, 5, 10, 20, 30, 45, 59)] + [("unlink", n) for n in (1, 2, 3)]
    for step, after in steps:
        directory = tmp_path / f"{step}-{after}"
        shutil.copytree(original, directory)
        done = subprocess.run([sys.executable, "-c", CRASHING_COMPACTION, str(directory), step, str(after)], capture_output=True)
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
        assert_holds_exactly(directory, live, deleted)
        store = DiskBlockStore(SPACE, directory)  # and a later compaction finishes the job
        await store.compact(0.3)
        store.close()
        assert_holds_exactly(directory, live, deleted)


# -- thousands of segments, few files -------------------------------------------------------------


async def test_a_node_with_1100_segments_starts_and_serves_under_a_limit_of_1024_files(tmp_path: Path) -> None:
    directory = tmp_path / "blocks"
    directory.mkdir()
    written = {}
    for segment in range(1, 1101):
        key, body = block(segment, 300)
        (directory / f"{segment:06d}.seg").write_bytes(records.encode_header(records.PUT, key, body) + body)
        written[key] = body

    def low_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    command = [CHORDCDN, "--log-level", "WARNING", "node", "--listen", "127.0.0.1:0", *NODE_FLAGS,
               *credential_flags("many-segments", Role.NODE), "--data", str(directory), "--replicas", "1"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, preexec_fn=low_file_limit)
    try:
        address, output = await read_ready_line(process, 30)
        assert b"1100 blocks" in output
        async with open_tcp_transport(None, tls=client_credentials()) as client:
            for key, body in written.items():
                assert await client.call(address, "get_block", [key], timeout=5) == body
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def test_a_directory_that_cannot_be_used_is_named_in_the_error() -> None:
    command = [CHORDCDN, "node", "--listen", "127.0.0.1:0", "--insecure", "--data", "/proc/nope"]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode != 0
    assert b"/proc/nope" in done.stderr and b"cannot listen" not in done.stderr and b"Traceback" not in done.stderr


# -- scrubbing --------------------------------------------------------------------------------------------


async def test_the_scrubber_finds_rot_no_client_reads_and_repair_restores_the_copy(
    make_cluster: ClusterFactory, autojump_clock: MockClock
) -> None:
    storage = StorageConfig(replicas=3, repair_interval=5.0, scrub_rate=1 << 20)
    cluster = make_cluster(storage=storage)
    cluster.add_stable_nodes(8)
    await cluster.start_all()
    client = cluster.client()
    keys = []
    for serial in range(20):
        key, body = block(serial)
        assert await client.put_block(body) == key
        keys.append(key)
    victim_key = keys[7]
    holders = [address for address, service in cluster.services.items() if victim_key in service.store]
    assert len(holders) == 3
    third = cluster.services[holders[-1]]  # a copy only repair ever reads
    third.store.blocks[victim_key] = b"rotten bytes"  # type: ignore[attr-defined]

    def intact() -> int:
        return sum(service.store.verified(victim_key) is not None for service in cluster.services.values())

    assert intact() == 2
    with trio.fail_after(120):
        while third.scrubber is None or third.scrubber.stats.bad == 0:
            await trio.sleep(1)
    with trio.fail_after(120):
        while intact() < 3:
            await trio.sleep(1)
    assert third.store.verified(victim_key) is not None
    assert sum(service.figures()["scrub_bad"] for service in cluster.services.values()) == 1
    assert dataclasses.asdict(third.scrubber.stats)["scrubbed"] >= 20
