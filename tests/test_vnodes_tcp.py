"""Virtual nodes over real TCP with mutual TLS: processes holding several ring
positions on one socket, in this process and through the `chordcdn` command.

Real time, so every wait polls a condition against a deadline.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from pathlib import Path

import pytest
import trio

from dht.addresses import host_of, vnode_address
from dht.blockstore import MemoryBlockStore
from dht.client import DhtClient
from dht.errors import IdentityMismatch, RemoteError
from dht.merkle import block_hash
from dht.node import ChordNode
from dht.routing import NodeRef, distinct_hosts
from dht.storage import BlockService, StorageConfig
from dht.tcp import open_tcp_transport
from dht.vnodes import join_all, positions_on

from .processes import chordcdn, check_passes_within, node_processes
from .test_tcp_ring import QUICK, client_credentials, eventually, node_credentials

VNODES = 4
STORAGE = StorageConfig(replicas=3, repair_interval=3600)


class VnodeRing:
    """Processes (simulated by cancel scopes) of VNODES positions each, on loopback."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.processes: list[list[ChordNode]] = []
        self.services: list[BlockService] = []

    async def start(self, join: str | None) -> list[ChordNode]:
        positions, service = await self.nursery.start(self._serve, join)
        self.processes.append(positions)
        self.services.append(service)
        return positions

    @staticmethod
    async def _serve(join: str | None, task_status: trio.TaskStatus[tuple[list[ChordNode], BlockService]]) -> None:
        async with open_tcp_transport("127.0.0.1", 0, tls=node_credentials()) as transport:
            positions = positions_on(transport, QUICK, VNODES)
            service = BlockService(positions, MemoryBlockStore(positions[0].space), STORAGE)
            await join_all(positions, join)
            async with trio.open_nursery() as nursery:
                for position in positions:
                    await nursery.start(position.run)
                task_status.started((positions, service))

    @property
    def positions(self) -> list[ChordNode]:
        return [position for process in self.processes for position in process]

    def consistent(self) -> bool:
        ids = sorted(node.me.id for node in self.positions)
        for node in self.positions:
            index = ids.index(node.me.id)
            predecessor = node.routing.predecessor
            if node.routing.successor.id != ids[(index + 1) % len(ids)] or predecessor is None or predecessor.id != ids[index - 1]:
                return False
            if len(distinct_hosts([node.me, *node.routing.successors])) < len(self.processes):
                return False  # the list does not reach every process yet
        return True

    def owner(self, key: int) -> int:
        ids = sorted(node.me.id for node in self.positions)
        return ids[bisect.bisect_left(ids, key) % len(ids)]


async def vnode_ring(nursery: trio.Nursery, processes: int) -> VnodeRing:
    ring = VnodeRing(nursery)
    first = await ring.start(None)
    for _ in range(processes - 1):
        await ring.start(first[0].me.address)
    await eventually(ring.consistent, 30)
    return ring


async def test_positions_share_a_socket_and_answer_lookups_and_blocks(nursery: trio.Nursery) -> None:
    ring = await vnode_ring(nursery, 3)
    first = ring.processes[0]
    assert [node.me.address for node in first] == [vnode_address(first[0].me.address, index) for index in range(VNODES)]
    assert len({host_of(node.me.address) for node in ring.positions}) == 3
    rng = random.Random(5)
    for _ in range(100):
        key = rng.getrandbits(256)
        assert (await rng.choice(ring.positions).lookup(key)).owner.id == ring.owner(key)
    async with open_tcp_transport(None, tls=client_credentials()) as transport:
        client = await DhtClient.via(transport, ring.processes[1][2].me.address)  # enter through a virtual node
        blocks = [rng.randbytes(300) for _ in range(20)]
        for data in blocks:
            await client.put_block(data)
        for data in blocks:
            holders = [service for service in ring.services if block_hash(data) in service.store]
            assert len(holders) == 3  # on three distinct processes, one copy each
            assert await client.get_block(block_hash(data)) == data


async def test_a_position_must_carry_the_id_its_certificate_derives(nursery: trio.Nursery) -> None:
    ring = await vnode_ring(nursery, 2)
    target = ring.processes[0][2]
    caller = ring.processes[1][0]
    assert await caller.ping(target.me) == target.me  # the derived ID is accepted
    with pytest.raises(IdentityMismatch):
        await caller.peers.call(NodeRef(target.me.id ^ 1, target.me.address), "ping")
    forged = [vnode_address(caller.me.address, 3), target.me.id - 1]  # a position its key does not give
    with pytest.raises(RemoteError, match="may only name itself"):
        await caller.peers.call(target.me, "notify", forged)


async def test_chordcdn_nodes_with_vnodes_form_a_checked_ring_and_store_files(tmp_path: Path) -> None:
    content = random.Random(9).randbytes(600_000)
    source = tmp_path / "file.bin"
    source.write_bytes(content)
    async with node_processes(3, [["--vnodes", "3", "--replicas", "3"] for _ in range(3)]) as nodes:
        assert all(b"3 ring positions" in node.output for node in nodes)
        await check_passes_within(nodes[0].address, 40)
        view = await chordcdn("ring", "--via", nodes[1].address, "--check", "--json")
        assert view.returncode == 0, view.stderr
        assert len(json.loads(view.stdout)["nodes"]) == 9
        put = await chordcdn("put", str(source), "--via", nodes[2].address, "--json")
        assert put.returncode == 0, put.stderr
        got = await chordcdn("get", json.loads(put.stdout)["cid"], "--via", nodes[0].address)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(got.stdout).digest() == hashlib.sha256(content).digest()
