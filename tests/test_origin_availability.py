"""The origin's availability check and the answers the edge's fallback relies on.

Protocol level, in this process: a TLS ring of storing nodes with disk stores
(`tests.availkit`), an origin whose publisher and checker talk to it with a
client certificate. Copies are damaged from outside, in the segment files, as a
bad disk would; no repair runs in the ring, so what heals was healed by the
origin. Also: Range requests conditioned on the CID (RFC 9110 §13.1.1, §14),
the pacing of a check, a put over a damaged copy, and the command's options.

Real time: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import random
import secrets
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from dht.segmentstore import DiskBlockStore
from dht.client import DhtClient
from dht.identity import PeerIdentity, Role
from dht.ids import IdSpace
from dht.merkle import block_hash, possession_proof
from dht.messages import ALLOWED
from dht.storage import BlockService
from dht.tcp import open_tcp_transport
from origin.availability import BlockReader, Pacer
from origin.catalog import cid_of
from origin.server import Origin, OriginConfig
from tools.cli import build_parser
from tools.config import parse_args_with_config
from tools.originrun import RunningOrigin, run_origin

from .availkit import DiskRing, dag_blocks, records, rot
from .processes import chordcdn
from .test_tcp_ring import client_credentials, eventually

CHUNK = 256 * 1024
BODY = random.Random(12).randbytes(10 * CHUNK + 1234)  # 11 leaves and a root


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "big.bin").write_bytes(BODY)
    (root / "small.txt").write_bytes(b"one leaf\n")
    return root


async def start_origin(nursery: trio.Nursery, root: Path, dht: str | None = None, **options: Any) -> RunningOrigin:
    config = OriginConfig(root, rescan=0.2, **options)
    serve = functools.partial(run_origin, config, "127.0.0.1", 0, dht, ring_tls=client_credentials() if dht else None)
    return await nursery.start(serve)


@pytest.fixture
async def ring(nursery: trio.Nursery, tmp_path: Path) -> DiskRing:
    ring = DiskRing(nursery, tmp_path / "ring")
    await ring.start(4)
    return ring


@pytest.fixture
async def client(ring: DiskRing) -> AsyncIterator[DhtClient]:
    async with open_tcp_transport(None, tls=client_credentials()) as transport:
        yield await DhtClient.via(transport, ring.address)


async def published(site: Path, client: DhtClient, **options: Any) -> Origin:
    origin = Origin(OriginConfig(site, **options))
    await origin.publish_all(client)
    assert origin.published["/big.bin"] == cid_of(io.BytesIO(BODY))
    return origin


def leaf(index: int) -> tuple[bytes, bytes]:
    """The key and bytes of the file's leaf at `index` (not the root)."""
    data = BODY[index * CHUNK : (index + 1) * CHUNK]
    return block_hash(data), data


# -- Range conditioned on the CID (the edge's fallback) ------------------------------------------


async def test_a_range_if_match_on_the_cid_is_206_with_the_rest(nursery: trio.Nursery, site: Path) -> None:
    running = await start_origin(nursery, site)
    cid = cid_of(io.BytesIO(BODY))
    offset = 9 * CHUNK  # where the edge lost the ring in issue 12
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http:
        rest = await http.get("/big.bin", headers={"Range": f"bytes={offset}-", "If-Match": f'"{cid}"'})
        assert rest.status_code == 206  # RFC 9110 §13.1.1 passes, then §14.2 applies
        assert rest.headers["content-range"] == f"bytes {offset}-{len(BODY) - 1}/{len(BODY)}"
        assert rest.content == BODY[offset:] and rest.headers["etag"] == f'"{cid}"'
        among = await http.get("/big.bin", headers={"Range": "bytes=5-", "If-Match": f'"{"0" * 64}", "{cid}"'})
        assert among.status_code == 206 and among.content == BODY[5:]
        beyond = await http.get("/big.bin", headers={"Range": f"bytes={len(BODY)}-", "If-Match": f'"{cid}"'})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(BODY)}"


async def test_a_range_if_match_on_another_cid_is_412(nursery: trio.Nursery, site: Path) -> None:
    running = await start_origin(nursery, site)
    cid = cid_of(io.BytesIO(BODY))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http:
        for tag in (f'"{"ab" * 32}"', f'W/"{cid}"', cid):  # another CID; weak never matches (§13.1.1); unquoted is no tag
            refused = await http.get("/big.bin", headers={"Range": "bytes=100-", "If-Match": tag})
            assert refused.status_code == 412, tag
            assert len(refused.content) < 100 and refused.headers.get("content-range") is None
        (site / "big.bin").write_bytes(BODY[::-1])  # a new version: the old CID no longer selects it
        stale = await http.get("/big.bin", headers={"Range": "bytes=100-", "If-Match": f'"{cid}"'})
        assert stale.status_code == 412
        new_cid = cid_of(io.BytesIO(BODY[::-1]))
        fresh = await http.get("/big.bin", headers={"Range": "bytes=100-", "If-Match": f'"{new_cid}"'})
        assert fresh.status_code == 206 and fresh.content == BODY[::-1][100:]


async def test_a_published_file_is_served_by_its_cid_while_it_is_that_version(nursery: trio.Nursery, site: Path) -> None:
    running = await start_origin(nursery, site)
    cid = cid_of(io.BytesIO(BODY))
    running.origin.published["/big.bin"] = cid  # as the publisher leaves it
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http:
        whole = await http.get(f"/cid/{cid}")
        assert whole.status_code == 200 and whole.content == BODY
        assert whole.headers["etag"] == f'"{cid}"' and "immutable" in whole.headers["cache-control"]
        rest = await http.get(f"/cid/{cid.upper()}", headers={"Range": f"bytes={9 * CHUNK}-", "If-Match": f'"{cid}"'})
        assert rest.status_code == 206 and rest.content == BODY[9 * CHUNK :]
        other = await http.get(f"/cid/{cid}", headers={"Range": "bytes=0-", "If-Match": f'"{"cd" * 32}"'})
        assert other.status_code == 412
        assert (await http.get(f"/cid/{'ab' * 32}")).status_code == 404  # never published here
        assert (await http.get("/cid/not-a-cid")).status_code == 404
        (site / "big.bin").write_bytes(BODY[::-1])  # that version is gone from the origin
        assert (await http.get(f"/cid/{cid}", headers={"Range": "bytes=0-", "If-Match": f'"{cid}"'})).status_code == 404


# -- the pieces -------------------------------------------------------------------------------------


def test_the_reader_gives_every_published_block_with_its_proof() -> None:
    blocks, root = dag_blocks(BODY)
    reader, nonce, seen = BlockReader(io.BytesIO(BODY)), secrets.token_bytes(16), []
    while batch := reader.next_batch(nonce, 4):
        assert len(batch) <= 4
        for block in batch:
            assert block.key == block_hash(block.data) and block.proof == possession_proof(nonce, block.data)
        seen.extend(block.data for block in batch)
    assert seen == blocks and reader.root == root and root.hex() == cid_of(io.BytesIO(BODY))


async def test_the_pacer_keeps_a_check_under_its_rate(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(rate=1000.0)
    start = trio.current_time()
    await pacer.spend(500)  # the first batch goes at once
    assert trio.current_time() == start
    for _ in range(4):
        await pacer.spend(500)
    assert trio.current_time() - start == pytest.approx(2.0)  # 2,000 bytes paid for before the fifth batch
    await trio.sleep(10)  # idle time is not saved up for a burst
    before = trio.current_time()
    await pacer.spend(500)
    await pacer.spend(500)
    assert trio.current_time() - before == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


async def test_a_put_over_a_damaged_copy_leaves_a_good_one(tmp_path: Path) -> None:
    space = IdSpace(256)
    key, data = leaf(3)
    store = DiskBlockStore(space, tmp_path / "store")
    assert await store.put(key, data)
    assert rot([tmp_path / "store"], key) == 1  # under the running store: its index still names the rotten copy
    assert key in store and store.verified(key) is None
    assert await store.put(key, data)  # True: a copy was written, not found intact
    assert store.verified(key) == data and store.corrupt_found == 1
    store.close()
    reopened = DiskBlockStore(space, tmp_path / "store")
    assert reopened.verified(key) == data
    assert reopened.loaded.damaged == 1  # the rotten record fails its checksum and is skipped
    assert [record.put for record in records(tmp_path / "store", key)] == [False, True]  # dropped, fresh
    reopened.close()


# -- checks against a ring -----------------------------------------------------------------------------


async def test_a_whole_ring_is_proved_and_nothing_is_put_again(ring: DiskRing, client: DhtClient, site: Path) -> None:
    origin = await published(site, client)
    used = {member.directory: member.store.used for member in ring.members}
    assert await origin.check_published(client) == 0
    stats = origin.availability
    blocks = len(dag_blocks(BODY)[0]) + len(dag_blocks(b"one leaf\n")[0])  # with their roots
    assert stats.passes == 1 and stats.files == 2 and stats.blocks == blocks
    assert stats.answers == {"proved": 3 * stats.blocks} and stats.short == stats.republished == 0
    assert {member.directory: member.store.used for member in ring.members} == used


async def test_every_copy_rotten_on_disk_is_put_back(
    ring: DiskRing, client: DhtClient, site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin = await published(site, client)
    key, data = leaf(9)
    assert rot(ring.directories(), key) == 3 and ring.holding(key) == []
    with caplog.at_level(logging.INFO, logger="origin"):
        assert await origin.check_published(client) == 1
    assert len(ring.holding(key)) == 3
    assert all(member.store.verified(key) == data for member in ring.holding(key))
    stats = origin.availability
    assert stats.short == stats.republished == 1 and stats.answers["missing"] == 3 and stats.failed == 0
    assert f"republished block {key.hex()} of /big.bin (0 of 3 copies were proved)" in caplog.text
    assert await read_back(client, origin.published["/big.bin"]) == BODY
    assert await origin.check_published(client) == 0  # healed: the next pass finds it whole


async def test_one_lost_copy_is_put_back(ring: DiskRing, client: DhtClient, site: Path) -> None:
    origin = await published(site, client)
    key, _ = leaf(2)
    loser, *_ = ring.holding(key)
    await loser.store.delete(key)
    assert await origin.check_published(client) == 1
    assert len(ring.holding(key)) == 3 and loser in ring.holding(key)
    assert origin.availability.answers["missing"] == 1


class LyingService(BlockService):
    """A node that claims every block it is challenged for, answering random bytes."""

    async def _on_prove_blocks(self, caller: PeerIdentity, args: list[Any]) -> list[bytes | None]:
        return [os.urandom(32) for _ in args[1]]


async def test_a_holder_that_lies_about_a_lost_block_is_not_believed(
    nursery: trio.Nursery, tmp_path: Path, site: Path
) -> None:
    ring = DiskRing(nursery, tmp_path / "ring")
    await ring.start(3)
    await ring.start(1, LyingService)
    liar = ring.members[-1]
    async with open_tcp_transport(None, tls=client_credentials()) as transport:
        client = await DhtClient.via(transport, ring.address)
        origin = await published(site, client)
        lost = liar.store.keys()
        for key in lost:
            await liar.store.delete(key)
        assert lost and await origin.check_published(client) == len(lost)
        assert all(liar.store.verified(key) is not None for key in lost)  # the puts reached it
        assert origin.availability.answers["wrong"] == len(lost)


class SilentService(BlockService):
    """A node that never answers a challenge (it still stores and serves blocks)."""

    async def _on_prove_blocks(self, caller: PeerIdentity, args: list[Any]) -> list[bytes | None]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_silent_holder_is_not_believed_but_not_waited_on(nursery: trio.Nursery, tmp_path: Path, site: Path) -> None:
    ring = DiskRing(nursery, tmp_path / "ring")
    await ring.start(3)
    await ring.start(1, SilentService)
    silent = ring.members[-1]
    async with open_tcp_transport(None, tls=client_credentials()) as transport:
        client = await DhtClient.via(transport, ring.address, timeout=1.0)
        origin = await published(site, client)
        held = silent.store.keys()
        assert held and await origin.check_published(client) == 0  # every block proved by the others
        assert origin.availability.answers["unreachable"] == len(held)
        key = next(key for key, _ in map(leaf, range(10)) if key in held)
        rot(ring.directories(), key)  # now no holder can prove it: the silent one does not count
        assert await origin.check_published(client) == 1 and len(ring.holding(key)) == 3


async def test_a_file_changed_since_publishing_is_left_to_the_publisher(ring: DiskRing, client: DhtClient, site: Path) -> None:
    origin = await published(site, client)
    key, _ = leaf(4)
    rot(ring.directories(), key)
    (site / "big.bin").write_bytes(b"another version")
    assert await origin.check_published(client) == 0
    assert origin.availability.files == 1  # small.txt only
    assert ring.holding(key) == []  # the old version's block is not the origin's to keep


async def test_the_origin_checks_on_its_own_at_the_interval(nursery: trio.Nursery, ring: DiskRing, site: Path) -> None:
    running = await start_origin(nursery, site, ring.address, check_interval=0.3, check_rate=64 * 1024 * 1024)
    origin = running.origin
    with trio.fail_after(20):
        await origin.wait_published()
    await eventually(lambda: origin.availability.passes >= 1)
    key, _ = leaf(7)
    rot(ring.directories(), key)
    await eventually(lambda: origin.availability.republished == 1, timeout=20)
    assert len(ring.holding(key)) == 3


async def test_no_check_runs_with_an_interval_of_zero(nursery: trio.Nursery, ring: DiskRing, site: Path) -> None:
    running = await start_origin(nursery, site, ring.address, check_interval=0)
    with trio.fail_after(20):
        await running.origin.wait_published()
    await trio.sleep(0.5)  # what is asserted is that nothing happens: a short look suffices
    assert running.origin.availability.passes == 0


async def read_back(client: DhtClient, cid: str) -> bytes:
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    await client.read(cid, sink)
    return b"".join(chunks)


# -- configuration -------------------------------------------------------------------------------------


def test_the_config_checks_interval_and_rate() -> None:
    assert OriginConfig(Path("."), check_interval=0).check_interval == 0
    with pytest.raises(ValueError, match="check interval"):
        OriginConfig(Path("."), check_interval=-1)
    with pytest.raises(ValueError, match="check rate"):
        OriginConfig(Path("."), check_rate=0)


def test_the_command_takes_the_check_from_flags_and_config_file(tmp_path: Path) -> None:
    base = ["origin", "--root", str(tmp_path), "--listen", "127.0.0.1:0"]
    args = parse_args_with_config(build_parser(), [*base, "--check-interval", "0", "--check-rate", "1MiB"])
    assert args.check_interval == 0 and args.check_rate == 1024 * 1024
    config = tmp_path / "origin.toml"
    config.write_text('check-interval = 30\ncheck_rate = "2MiB"\n')
    args = parse_args_with_config(build_parser(), [*base, "--config", str(config)])
    assert args.check_interval == 30 and args.check_rate == 2 * 1024 * 1024
    defaults = parse_args_with_config(build_parser(), base)
    assert defaults.check_interval == 600 and defaults.check_rate == 16 * 1024 * 1024


@pytest.mark.parametrize("flags", [["--check-interval", "-1"], ["--check-interval", "nan"], ["--check-rate", "0"], ["--check-rate", "fast"]])
async def test_the_command_refuses_bad_check_options(tmp_path: Path, flags: list[str]) -> None:
    result = await chordcdn("origin", "--root", str(tmp_path), "--listen", "127.0.0.1:0", *flags)
    assert result.returncode == 2 and flags[0].encode() in result.stderr and b"Traceback" not in result.stderr


def test_a_client_certificate_may_ask_for_proofs_a_reader_may_not() -> None:
    assert Role.CLIENT in ALLOWED["prove_blocks"] and Role.READER not in ALLOWED["prove_blocks"]

