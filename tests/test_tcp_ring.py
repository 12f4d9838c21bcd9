"""The same Chord node over real TCP: 8 nodes in this process on 127.0.0.1 port 0,
every link mutual TLS, each node's ID the one its certificate gives.

Real time, so every wait polls a condition against a deadline.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
from typing import Callable

import trio

from dht.identity import Role
from dht.node import ChordNode, NodeConfig
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials

from .processes import pki

QUICK = NodeConfig(stabilize_interval=0.1, fix_fingers_interval=0.05, check_predecessor_interval=0.1, rpc_timeout=0.5)
_serial = itertools.count()


def node_credentials() -> TlsCredentials:
    return pki().credentials(f"ring-node-{next(_serial)}", Role.NODE)


def client_credentials() -> TlsCredentials:
    return pki().credentials("ring-client", Role.CLIENT)


async def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


class LocalRing:
    """Nodes on loopback, each in its own cancel scope so one can be killed."""

    def __init__(self, nursery: trio.Nursery, config: NodeConfig = QUICK) -> None:
        self.nursery, self.config = nursery, config
        self.nodes: dict[str, ChordNode] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, join: str | None) -> ChordNode:
        node, scope = await self.nursery.start(self._serve, join, self.config)
        self.nodes[node.me.address], self.scopes[node.me.address] = node, scope
        return node

    @staticmethod
    async def _serve(
        join: str | None, config: NodeConfig, task_status: trio.TaskStatus[tuple[ChordNode, trio.CancelScope]]
    ) -> None:
        with trio.CancelScope() as scope:
            async with open_tcp_transport("127.0.0.1", 0, tls=node_credentials()) as transport:
                node = ChordNode(transport, config)
                await node.join(join)
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    task_status.started((node, scope))
                await trio.sleep_forever()  # after a leave, until cancelled: the transport stays open

    def kill(self, address: str) -> None:
        """Stop answering at once: the listener and every connection close."""
        self.scopes.pop(address).cancel()
        del self.nodes[address]

    def consistent(self) -> bool:
        ids = sorted(node.me.id for node in self.nodes.values())
        for node in self.nodes.values():
            index = ids.index(node.me.id)
            pred = node.routing.predecessor
            if node.routing.successor.id != ids[(index + 1) % len(ids)] or pred is None or pred.id != ids[index - 1]:
                return False
        return True

    def owner(self, key: int) -> int:
        ids = sorted(node.me.id for node in self.nodes.values())
        return ids[bisect.bisect_left(ids, key) % len(ids)]


async def start_ring(nursery: trio.Nursery, count: int, config: NodeConfig = QUICK) -> LocalRing:
    ring = LocalRing(nursery, config)
    first = await ring.start(None)
    for _ in range(count - 1):
        await ring.start(first.me.address)
    await eventually(ring.consistent)
    return ring


async def all_lookups_correct(ring: LocalRing, count: int) -> None:
    rng = random.Random(7)
    nodes = list(ring.nodes.values())
    for _ in range(count):
        key = rng.getrandbits(256)
        result = await rng.choice(nodes).lookup(key)
        assert result.owner.id == ring.owner(key)


async def test_eight_tcp_nodes_converge_and_route(nursery: trio.Nursery) -> None:
    ring = await start_ring(nursery, 8)
    assert all(node.me.address.startswith("127.0.0.1:") for node in ring.nodes.values())
    await all_lookups_correct(ring, 300)


async def test_recursive_lookups_over_mutual_tls_are_answered_by_the_owner(nursery: trio.Nursery) -> None:
    """Each hop passes the query on over its own TLS link, and the owner's `found`
    reaches the asker as a call from a certificate that names the owner."""
    ring = await start_ring(nursery, 8, dataclasses.replace(QUICK, lookup_mode="recursive"))
    rng = random.Random(3)
    nodes = list(ring.nodes.values())
    for _ in range(100):
        key = rng.getrandbits(256)
        with trio.fail_after(5):
            result = await rng.choice(nodes).recursive.lookup(key, 5.0)
        assert result.owner.id == ring.owner(key)


async def test_tcp_ring_heals_after_a_node_dies(nursery: trio.Nursery) -> None:
    ring = await start_ring(nursery, 8)
    ring.kill(sorted(ring.nodes)[3])
    await eventually(ring.consistent)
    await all_lookups_correct(ring, 200)


async def test_tcp_graceful_leave_repairs_neighbours_at_once(nursery: trio.Nursery) -> None:
    ring = await start_ring(nursery, 6)
    address = sorted(ring.nodes)[2]
    leaving = ring.nodes[address]
    await leaving.leave()
    ring.kill(address)
    assert ring.consistent()  # predecessor and successor were told directly
    await all_lookups_correct(ring, 100)


async def test_lookup_rpc_reports_path_over_tcp(nursery: trio.Nursery) -> None:
    ring = await start_ring(nursery, 8)
    await eventually(lambda: all(n.routing.finger_count() > 0 for n in ring.nodes.values()))
    asker = next(iter(ring.nodes.values()))
    async with open_tcp_transport(None, tls=client_credentials()) as client:
        reply = await client.call(asker.me.address, "lookup", [12345], timeout=5)
    assert reply["owner"][1] == ring.owner(12345)
    assert reply["hops"] == len(reply["path"])

