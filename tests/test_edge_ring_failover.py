"""An edge reads the ring through a set of contacts, not one node (issue 12).

Options: `--dht` as a list, on the command line and in a config file. On the
simulated ring in virtual time, where a dead node never answers (the hard case):
the edge learns members from the ring, every request after its contact died is
answered within its deadline, a contact dead from the start costs no request, a
miss is still a miss, and no live contact is RingUnreachable. Over stand-in
clients: a request whose contact fails goes on through the next one, a read
broken off goes on from the first byte not sent, and a leaf the contact could
not get comes through another contact before the origin fallback. End to end,
through `chordcdn` processes: an edge keeps serving `/cid/` and paths from the
ring after its only named node is SIGKILLed, and an edge whose first named node
is dead from the start works.
"""

from __future__ import annotations

import io
import os
import random
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Awaitable, Callable

import httpx
import pytest
import trio
from trio.testing import MockClock

from dht.client import BlockNotFound, LeafSource
from dht.errors import LookupFailed
from dht.identity import Role
from dht.merkle import parse_cid
from dht.simcluster import SimCluster
from dht.storage import StorageConfig
from edge.upstream import DhtSource, RingUnreachable, Sink, ring_addresses
from tools.cli import build_parser
from tools.config import ConfigError, parse_args_with_config

from .cdnkit import tier_of
from .conftest import ClusterFactory
from .processes import check_passes_within, credential_flags, node_processes
from .test_cdn_e2e import free_port, start

TIMEOUT = 5.0  # the edge's default cid_timeout: each request's deadline
MANUAL = StorageConfig(replicas=3, repair_interval=10_000)
EDGE_ARGS = ["edge", "--listen", "127.0.0.1:0", "--name", "e", "--origin", "http://o"]


# -- options -------------------------------------------------------------------------------


def test_ring_addresses_split_commas_and_drop_blanks_and_repeats() -> None:
    assert ring_addresses("a:1") == ("a:1",)
    assert ring_addresses(" a:1, b:2 ,,a:1") == ("a:1", "b:2")
    assert ring_addresses(["a:1,b:2", "c:3"]) == ("a:1", "b:2", "c:3")
    assert ring_addresses("") == ()


def test_dht_option_takes_lists_and_repeats() -> None:
    args = build_parser().parse_args([*EDGE_ARGS, "--dht", "a:1,b:2", "--dht", "[::1]:3"])
    assert args.dht == ["a:1", "b:2", "[::1]:3"]
    assert build_parser().parse_args(EDGE_ARGS).dht is None


@pytest.mark.parametrize("bad", ["nope", "a:1,b", ","])
def test_dht_option_refuses_what_is_not_host_port(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*EDGE_ARGS, "--dht", bad])
    assert "--dht" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line, expected",
    [('dht = "a:1"', ["a:1"]), ('dht = "a:1,b:2"', ["a:1", "b:2"]), ('dht = ["a:1", "b:2,c:3"]', ["a:1", "b:2", "c:3"])],
)
def test_dht_in_a_config_file_is_a_string_or_an_array(tmp_path: Path, line: str, expected: list[str]) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(line + "\n")
    assert parse_args_with_config(build_parser(), [*EDGE_ARGS, "--config", str(config)]).dht == expected
    given = parse_args_with_config(build_parser(), [*EDGE_ARGS, "--config", str(config), "--dht", "z:9"])
    assert given.dht == ["z:9"]  # the command line replaces the file's list


def test_a_bad_dht_in_a_config_file_names_the_key_and_item(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('dht = ["a:1", "nope"]\n')
    with pytest.raises(ConfigError, match=r'key "dht", item 2: .*HOST:PORT'):
        parse_args_with_config(build_parser(), [*EDGE_ARGS, "--config", str(config)])


# -- the protocol, on the simulated ring ---------------------------------------------------------


async def storing_ring(make_cluster: ClusterFactory, count: int = 6) -> SimCluster:
    cluster = make_cluster(storage=MANUAL)
    await cluster.grow(count)
    await cluster.wait_until(lambda: cluster.is_converged() and cluster.successor_lists_full(), 60)
    return cluster


async def publish(cluster: SimCluster, data: bytes) -> str:
    return await cluster.client().put_file(io.BytesIO(data), 64 * 1024, 4)  # several leaves and inner blocks


async def read_all(source: DhtSource, cid: str, start: int = 0, end: int | None = None, fallback: LeafSource | None = None) -> bytes:
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)

    await source.pump(cid, sink, start, end, fallback)
    return bytes(out)


async def within_deadline(work: Callable[[], Awaitable[object]]) -> object:
    started = trio.current_time()
    result = await work()
    assert trio.current_time() - started <= TIMEOUT
    return result


async def test_after_its_contact_died_every_request_is_answered_within_its_deadline(
    make_cluster: ClusterFactory, autojump_clock: MockClock
) -> None:
    cluster = await storing_ring(make_cluster)
    data = random.Random(3).randbytes(300_000)
    cid = await publish(cluster, data)
    contact = sorted(cluster.nodes)[0]
    source = DhtSource(cluster.network.endpoint("edge"), contact, TIMEOUT)
    assert await source.size_of(cid) == len(data) and await read_all(source, cid) == data
    assert len(source.contacts) > 1 and all(c.node_id is not None for c in source.contacts[1:])  # learned from the ring

    cluster.crash(contact)
    await cluster.wait_until(cluster.is_converged, 60)  # the ring healed; only the edge still knows the dead node
    for index in range(20):
        assert await within_deadline(lambda: source.size_of(cid)) == len(data)
        start = index * 10_000
        assert await read_all(source, cid, start, start + 70_000) == data[start : start + 70_000]


async def test_a_contact_dead_from_the_start_costs_no_request(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    data = random.Random(4).randbytes(100_000)
    cid = await publish(cluster, data)
    live = sorted(cluster.nodes)[0]
    source = DhtSource(cluster.network.endpoint("edge"), ["sim-999", live], TIMEOUT)
    assert await within_deadline(lambda: source.size_of(cid)) == len(data)
    assert await read_all(source, cid) == data


async def test_a_miss_is_an_answer_and_costs_no_contact(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    source = DhtSource(cluster.network.endpoint("edge"), sorted(cluster.nodes)[0], TIMEOUT)
    with pytest.raises(BlockNotFound):
        await within_deadline(lambda: source.size_of("ab" * 32))
    assert source.contacts[0].failed_at == float("-inf") and source.contacts[0].client is not None


async def test_no_live_contact_is_ring_unreachable_within_the_deadline(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster, 3)
    source = DhtSource(cluster.network.endpoint("edge"), "sim-998,sim-999", TIMEOUT)
    with pytest.raises(RingUnreachable, match="sim-998.*sim-999"):
        await within_deadline(lambda: source.size_of("ab" * 32))


async def test_refresh_finds_a_dead_contact_between_requests(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await storing_ring(make_cluster)
    first = sorted(cluster.nodes)[0]
    source = DhtSource(cluster.network.endpoint("edge"), first, TIMEOUT)
    assert await source.refresh() and len(source.contacts) > 1
    cluster.crash(first)
    assert await source.refresh()
    assert source._next(set()).address != first


class _FakeClient:
    """A contact's client over `data`, sending 10-byte pieces. With `fail_after`, the
    contact dies after that many bytes (at once, for 0); with `lacks`, the ring has
    no leaf. A piece it cannot get is asked of `leaves` when given, as DhtClient does."""

    def __init__(self, data: bytes, fail_after: int | None = None, lacks: bool = False) -> None:
        self.data, self.fail_after, self.lacks = data, fail_after, lacks
        self.starts: list[int] = []

    async def stat(self, cid: str) -> SimpleNamespace:
        if self.fail_after == 0:
            raise LookupFailed("no live route (the contact died)")
        return SimpleNamespace(size=len(self.data))

    async def read(self, cid: str, sink: Sink, start: int, end: int | None, leaves: LeafSource | None = None) -> int:
        self.starts.append(start)
        end = len(self.data) if end is None else end
        for offset in range(start, end, 10):
            size = min(10, end - offset)
            dead = self.fail_after is not None and offset - start >= self.fail_after
            if not (dead or self.lacks):
                await sink(self.data[offset : offset + size])
            elif leaves is not None:
                await sink(await leaves(offset, size))
            else:
                raise BlockNotFound("no replica has it") if self.lacks else LookupFailed("no live route (the contact died)")
        return end - start


def over_fake_contacts(*clients: _FakeClient) -> DhtSource:
    source = DhtSource(None, [f"n{index}:1" for index in range(len(clients))], TIMEOUT)  # type: ignore[arg-type]  # no transport needed
    for contact, client in zip(source.contacts, clients):
        contact.client = client  # type: ignore[assignment]
    return source


async def test_a_request_whose_contact_fails_goes_on_through_the_next() -> None:
    source = over_fake_contacts(_FakeClient(b"x" * 100, fail_after=0), _FakeClient(b"x" * 100))
    assert await source.size_of("ab" * 32) == 100
    assert source._next(set()).address == "n1:1" and source.contacts[0].client is None


async def test_a_read_broken_off_goes_on_from_the_first_byte_not_sent() -> None:
    data = bytes(range(256))
    dying, taking_over = _FakeClient(data, fail_after=50), _FakeClient(data)
    source = over_fake_contacts(dying, taking_over)
    assert await read_all(source, "ab" * 32, 7, 200) == data[7:200]
    assert dying.starts == [7] and taking_over.starts == [57]
    assert source._next(set()).address == "n1:1"


class _Fallback:
    """The origin's side of a leaf fallback: counts the leaves asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, 0

    async def __call__(self, offset: int, size: int) -> bytes:
        self.asked += 1
        return self.data[offset : offset + size]


async def test_a_leaf_the_contact_could_not_get_comes_through_another_contact_first() -> None:
    data = bytes(range(200))
    fallback = _Fallback(data)
    source = over_fake_contacts(_FakeClient(data, fail_after=30), _FakeClient(data))
    assert await read_all(source, "ab" * 32, 0, 100, fallback) == data[:100]
    assert fallback.asked == 0  # the ring had every leaf: the contact was at fault
    assert source._next(set()).address == "n1:1" and source.contacts[0].client is None


async def test_a_leaf_no_contact_can_get_comes_from_the_fallback_and_costs_no_contact() -> None:
    data = bytes(range(200))
    fallback = _Fallback(data)
    source = over_fake_contacts(_FakeClient(data, lacks=True), _FakeClient(data, lacks=True))
    assert await read_all(source, "ab" * 32, 0, 40, fallback) == data[:40]
    assert fallback.asked == 4 and all(contact.client is not None for contact in source.contacts)


# -- end to end, through processes ------------------------------------------------------------


def small_files(root: Path, count: int) -> dict[str, bytes]:
    files = {f"/f{index}.bin": os.urandom(20_000 + 1_000 * index) for index in range(count)}
    files["/large.bin"] = os.urandom(700_000)  # three leaves
    for path, body in files.items():
        (root / path.lstrip("/")).write_bytes(body)
    return files


async def published_cids(client: httpx.AsyncClient, origin: str, paths: list[str]) -> dict[str, str]:
    """Each path's CID, once the origin has published it (polled, with a deadline)."""
    cids: dict[str, str] = {}
    with trio.fail_after(30):
        while len(cids) < len(paths):
            for path in paths:
                cid = (await client.head(f"http://{origin}{path}")).headers.get("x-content-cid")
                if cid:
                    cids[path] = cid
            await trio.sleep(0.1)
    return cids


async def start_edge(origin: str, dht: str, name: str) -> tuple[trio.Process, str]:
    return await start(
        "edge", "--listen", f"127.0.0.1:{free_port()}", "--name", name, "--origin", f"http://{origin}", "--dht", dht,
        *credential_flags(name, Role.READER, "ring-"),
    )


async def test_killing_the_edges_only_named_node_costs_no_request(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    files = small_files(tmp_path / "site", 24)
    processes: list[trio.Process] = []
    async with node_processes(4) as nodes, httpx.AsyncClient(timeout=20) as client:
        try:
            await check_passes_within(nodes[0].address)
            origin, origin_address = await start(
                "origin", "--root", str(tmp_path / "site"), "--listen", "127.0.0.1:0", "--dht", nodes[0].address,
                *credential_flags("origin", Role.CLIENT, "ring-"),
            )
            processes.append(origin)
            cids = await published_cids(client, origin_address, sorted(files))
            edge, edge_address = await start_edge(origin_address, nodes[1].address, "edge-one")
            processes.append(edge)
            await expect_cid(client, edge_address, cids["/f0.bin"], files["/f0.bin"])

            nodes[1].process.send_signal(signal.SIGKILL)
            await nodes[1].process.wait()
            for index in range(1, 21):  # each a CID the edge has not served, so each one reads the ring
                await expect_cid(client, edge_address, cids[f"/f{index}.bin"], files[f"/f{index}.bin"])
                await trio.sleep(0.2)  # spread over several seconds of the ring noticing the death
            await expect_cid(client, edge_address, cids["/large.bin"], files["/large.bin"])
            for path in ("/f21.bin", "/f22.bin"):
                response = await client.get(f"http://{edge_address}{path}")
                assert response.status_code == 200 and response.content == files[path] and tier_of(response) == "dht"

            config = tmp_path / "edge.toml"  # the dead node first, from a config file's list
            config.write_text(f'dht = ["{nodes[1].address}", "{nodes[2].address}"]\n')
            second, second_address = await start(
                "edge", "--listen", f"127.0.0.1:{free_port()}", "--name", "edge-two", "--origin", f"http://{origin_address}",
                "--config", str(config), *credential_flags("edge-two", Role.READER, "ring-"),
            )
            processes.append(second)
            await expect_cid(client, second_address, cids["/f23.bin"], files["/f23.bin"])
            await expect_cid(client, second_address, cids["/large.bin"], files["/large.bin"])
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
            with trio.move_on_after(5):
                for process in processes:
                    await process.wait()


async def expect_cid(client: httpx.AsyncClient, edge: str, cid: str, body: bytes) -> None:
    parse_cid(cid)
    response = await client.get(f"http://{edge}/cid/{cid}")
    assert response.status_code == 200, response.text[:300]
    assert response.content == body


