"""A cluster of real Chord nodes on a `SimNetwork`, with the oracle that judges them.

Owns starting, crashing, restarting and retiring simulated nodes (each with its
virtual nodes, when it has them: `nodes` holds each process's first position,
`positions` all of them), and the truth they are measured against: the sorted ring
of live positions, the true owner of a key, and which successor and predecessor
pointers disagree with it. Tests and the
churn simulator both build on this. Waiting is done on conditions with deadlines,
in virtual time, never by sleeping a fixed span.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Callable

import trio

from .blockstore import MemoryBlockStore
from .client import DhtClient
from .loadbalance import percentile
from .errors import LookupFailed
from .node import ChordNode, NodeConfig
from .storage import BlockService, StorageConfig
from .routing import NodeRef, merge_successor_list
from .simnet import SimEndpoint, SimNetwork
from .vnodes import join_all, open_positions
from .addresses import MAX_VNODES, vnode_address


class ConvergenceTimeout(Exception):
    """A condition did not become true within its deadline."""


@dataclass
class LookupTally:
    """Outcomes of a batch of lookups judged by the oracle."""

    correct: int = 0
    wrong: int = 0
    failed: int = 0
    timeouts: int = 0
    hops: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.correct + self.wrong + self.failed

    def summary(self) -> dict[str, float | int]:
        """Rates and percentiles (nearest rank) for reports."""
        total = self.total or 1
        hops = sorted(self.hops)
        latencies = sorted(self.latencies)
        return {
            "lookups": self.total,
            "lookup_success_rate": (self.correct + self.wrong) / total,
            "correct_rate": self.correct / total,
            "wrong": self.wrong,
            "failed": self.failed,
            "timeouts": self.timeouts,
            "mean_hops": sum(hops) / len(hops) if hops else 0.0,
            "p50_hops": percentile(hops, 0.50),
            "p99_hops": percentile(hops, 0.99),
            "max_hops": hops[-1] if hops else 0,
            "mean_latency": sum(latencies) / len(latencies) if latencies else 0.0,
            "p50_latency": percentile(latencies, 0.50),
            "p99_latency": percentile(latencies, 0.99),
        }


class SimCluster:
    """Real nodes in one nursery on one simulated network."""

    def __init__(
        self,
        nursery: trio.Nursery,
        network: SimNetwork,
        config: NodeConfig,
        rng: random.Random,
        storage: StorageConfig | None = None,
        vnodes: int = 1,
    ) -> None:
        """`vnodes`: ring positions per simulated process (`dht.vnodes`)."""
        if not 1 <= vnodes <= MAX_VNODES:
            raise ValueError(f"vnodes must be in 1..{MAX_VNODES}, got {vnodes}")
        self.vnodes = vnodes
        self.nursery = nursery
        self.network = network
        self.config = config
        self.rng = rng
        self.storage = storage
        self.nodes: dict[str, ChordNode] = {}  # each process's first position, by its address
        self.positions: dict[str, ChordNode] = {}  # every position, virtual ones included
        self.services: dict[str, BlockService] = {}
        self.retired_repair_bytes = 0
        self._scopes: dict[str, trio.CancelScope] = {}
        self._serial = 0
        self._ids: list[int] = []
        self._joining: set[int] = set()  # IDs of nodes whose join is under way
        self._leaving: set[int] = set()  # IDs of nodes whose graceful leave is under way
        self._addresses: list[str] = []
        self._hosts: dict[str, list[ChordNode]] = {}  # a process's positions, by its first one's address

    # -- membership -----------------------------------------------------------------

    def new_address(self) -> str:
        self._serial += 1
        return f"sim-{self._serial}"

    def _make_node(self, address: str | None, node_id: int | None) -> ChordNode:
        """A process's nodes (its first, then its virtual ones), not yet joined."""
        while True:
            address = address or self.new_address()
            node = ChordNode(self.network.endpoint(address), self.config, node_id, random.Random(self.rng.random()))
            positions = open_positions(node, self.vnodes, self._virtual_endpoint(address), self.rng)
            if not {position.me.id for position in positions} & self._id_set():
                self._hosts[address] = positions
                if self.storage is not None:
                    self.services[address] = BlockService(positions, MemoryBlockStore(node.space), self.storage)
                return node
            self._crash_all(positions)
            if node_id is not None:
                raise ValueError(f"node ID {node_id:x} is already live")
            address = None

    def _crash_all(self, positions: list[ChordNode]) -> None:
        """Every endpoint of a process stops answering at once."""
        for position in positions:
            self.network.crash(position.me.address)

    def _virtual_endpoint(self, address: str) -> Callable[[int, int], SimEndpoint]:
        """Endpoints for a process's virtual nodes: one per position, at "address/i"."""
        return lambda index, _ident: self.network.endpoint(vnode_address(address, index))

    def _id_set(self) -> set[int]:
        return {node.me.id for node in self.positions.values()}

    async def add_node(self, bootstrap: str | None = None, address: str | None = None, node_id: int | None = None) -> ChordNode:
        """Start a node that joins through `bootstrap` (a random live node when None;
        it founds the ring when the cluster is empty)."""
        node = self._make_node(address, node_id)
        if bootstrap is None and self.nodes:
            bootstrap = self.rng.choice(sorted(self.nodes))
        positions = self._hosts[node.me.address]
        self._joining.update(position.me.id for position in positions)
        try:
            await join_all(positions, bootstrap)
        except BaseException:
            self._crash_all(positions)  # never half-attached
            self.services.pop(node.me.address, None)
            del self._hosts[node.me.address]
            raise
        finally:
            self._joining.difference_update(position.me.id for position in positions)
        self._register(node)
        self._scopes[node.me.address] = await self.nursery.start(self._run, node, self.services.get(node.me.address))
        return node

    def add_stable_nodes(self, count: int) -> list[ChordNode]:
        """Create `count` nodes whose routing state is already the oracle's ideal
        (successors, predecessor, every finger), as if fully stabilized."""
        nodes = [self._make_node(None, None) for _ in range(count)]
        for node in nodes:
            self._register(node)
        self.install_ideal_routing()
        return nodes

    async def grow(self, count: int) -> None:
        """Join `count` nodes one by one, each through a random live node."""
        for _ in range(count):
            await self.add_node()

    async def start_all(self) -> None:
        """Start maintenance on every node not yet running (after add_stable_nodes)."""
        for address, node in self.nodes.items():
            if address not in self._scopes:
                self._scopes[address] = await self.nursery.start(self._run, node, self.services.get(address))

    def _register(self, node: ChordNode) -> None:
        self.nodes[node.me.address] = node
        for position in self._hosts[node.me.address]:
            self.positions[position.me.address] = position
            bisect.insort(self._ids, position.me.id)
        bisect.insort(self._addresses, node.me.address)

    def _unregister(self, address: str) -> ChordNode:
        node = self.nodes.pop(address)
        self._addresses.pop(bisect.bisect_left(self._addresses, address))
        service = self.services.pop(address, None)
        if service is not None:
            self.retired_repair_bytes += service.stats.repair_bytes
        for position in self._hosts.pop(address):
            del self.positions[position.me.address]
            self._ids.pop(bisect.bisect_left(self._ids, position.me.id))
        scope = self._scopes.pop(address, None)
        if scope is not None:
            scope.cancel()
        return node

    async def _run(
        self,
        node: ChordNode,
        service: BlockService | None,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with trio.open_nursery() as nursery:
                for position in self._hosts[node.me.address]:
                    nursery.start_soon(position.run)
                if service is not None:
                    nursery.start_soon(service.run)

    def crash(self, address: str) -> ChordNode:
        """Crash a node (all of its process's positions): it stops answering at once
        and its memory is gone."""
        self._crash_all(self._hosts[address])
        return self._unregister(address)

    async def leave(self, address: str) -> ChordNode:
        """A graceful leave (handing off blocks first when storing), then the node is gone."""
        service = self.services.get(address)
        positions = self._hosts[address]
        node = self._unregister(address)
        self._leaving.update(position.me.id for position in positions)
        try:
            if service is not None:
                await service.leave()
            else:
                for position in positions:
                    await position.leave()
        finally:
            self._leaving.difference_update(position.me.id for position in positions)
            self._crash_all(positions)
        return node

    # -- storage --------------------------------------------------------------------------

    def client(self) -> DhtClient:
        """A client embedded in a random live node."""
        replicas = self.storage.replicas if self.storage else 3
        return DhtClient.for_node(self.random_node(), replicas=replicas)

    def copies(self, key: bytes) -> int:
        """How many live nodes hold a block."""
        return sum(key in service.store for service in self.services.values())

    def live_copies(self, keys: set[bytes]) -> dict[bytes, int]:
        """Live copies of each of `keys`, counted in one pass over the live stores."""
        counts = dict.fromkeys(keys, 0)
        for service in self.services.values():
            for key in service.store.keys():
                if key in counts:
                    counts[key] += 1
        return counts

    def repair_bytes(self) -> int:
        """Bytes moved by repair so far, departed nodes included."""
        return self.retired_repair_bytes + sum(s.stats.repair_bytes for s in self.services.values())

    def all_keys(self) -> set[bytes]:
        return {key for service in self.services.values() for key in service.store.keys()}

    async def repair_all(self) -> None:
        """One maintenance pass on every live node, in ring order."""
        by_id = self._by_id()
        for ident in list(self._ids):
            node = by_id.get(ident)
            service = self.services.get(node.me.address) if node else None
            if service is not None:
                await service.repair()

    # -- the oracle -----------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        """Live node IDs in ring order."""
        return self._ids

    def _by_id(self) -> dict[int, ChordNode]:
        return {node.me.id: node for node in self.positions.values()}

    def owner_id(self, key: int) -> int:
        """The ID of the live node that truly owns key."""
        index = bisect.bisect_left(self._ids, key)
        return self._ids[index % len(self._ids)]

    def right_owners(self, key: int) -> set[int]:
        """The owners a lookup of `key` may rightly name at this moment: the live
        node at or after it, or a node whose join or graceful leave is under way
        and lies between them, since either takes effect at some moment while it
        runs."""
        owner = self.owner_id(key)
        size = 1 << self.config.bits
        span = (owner - key) % size
        return {owner, *(ident for ident in self._joining | self._leaving if (ident - key) % size < span)}

    def judge(self, key: int, answer: int, right_at_start: set[int]) -> bool:
        """Whether a lookup that named `answer` was right: it named the owner at
        some moment while it ran, which for a lookup that saw no more than one
        change of membership means at its start or now (linearizability: an
        operation takes effect between its call and its return)."""
        return answer in right_at_start or answer in self.right_owners(key)

    def ring_errors(self) -> list[str]:
        """Every successor or predecessor pointer that disagrees with the true ring."""
        by_id = self._by_id()
        ids = self._ids
        errors: list[str] = []
        for index, ident in enumerate(ids):
            node = by_id[ident]
            true_successor = ids[(index + 1) % len(ids)]
            true_predecessor = ids[index - 1]
            successor = node.routing.successor.id
            predecessor = node.routing.predecessor.id if node.routing.predecessor else None
            if len(ids) > 1 and successor != true_successor:
                errors.append(f"{node.me.address}: successor {successor:x} should be {true_successor:x}")
            if len(ids) > 1 and predecessor != true_predecessor:
                actual = "none" if predecessor is None else format(predecessor, "x")
                errors.append(f"{node.me.address}: predecessor {actual} should be {true_predecessor:x}")
        return errors

    def is_converged(self) -> bool:
        return not self.ring_errors()

    def ideal_successors(self, node: ChordNode, by_id: dict[int, ChordNode] | None = None) -> list[NodeRef]:
        """The successor list a live node holds on a stabilized ring: the live
        positions that follow it, one per process (`routing.merge_successor_list`)."""
        ids, by_id = self._ids, by_id or self._by_id()
        index = bisect.bisect_left(ids, node.me.id)
        count, size = len(ids), node.routing.successor_list_size
        window = 2 * size  # widened only where a few processes hold most positions
        while True:
            after = [by_id[ids[(index + k) % count]].me for k in range(1, min(window, count) + 1)]
            merged = merge_successor_list(node.me, after[0], after[1:], size) if count > 1 else []
            if len(merged) == size or window >= count:
                return merged
            window *= 2

    def successor_lists_right(self) -> bool:
        """Every live node's successor list is exactly the live nodes that follow
        it, as many as the list holds (Zave's invariant, with the ring's order)."""
        by_id = self._by_id()
        return all(node.routing.successors == self.ideal_successors(node, by_id) for node in self.positions.values())

    def successor_lists_full(self) -> bool:
        """Every live node's successor list is as long as the ring allows."""
        by_id = self._by_id()
        return all(len(node.routing.successors) >= len(self.ideal_successors(node, by_id)) for node in self.positions.values())

    def fingers_converged(self) -> bool:
        """Every finger of every live node points at the true successor of its
        start, or at another live node of its interval (proximity's choice)."""
        live = self._by_id()
        for node in self.positions.values():
            for index, finger in enumerate(node.routing.fingers):
                owner = self.owner_id(node.space.finger_start(node.me.id, index))
                if (finger.id if finger else node.me.id) == owner:
                    continue
                if finger is None or finger.id not in live or node.routing.finger_index(finger.id) != index:
                    return False
        return True

    async def run_lookups(self, count: int, parallel: int = 100, deadline: float | None = None) -> LookupTally:
        """Look up `count` random keys from random live nodes, `parallel` at a time,
        each within `deadline` seconds (by default the node's lookup timeout),
        judging each answer against the true owner when it arrives."""
        tally = LookupTally()

        async def one() -> None:
            key = self.rng.getrandbits(self.config.bits)
            started, right_at_start = trio.current_time(), self.right_owners(key)
            try:
                result = await self.random_node().lookup(key, deadline)
            except LookupFailed:
                tally.failed += 1
                return
            tally.latencies.append(trio.current_time() - started)
            tally.hops.append(result.hops)
            tally.timeouts += result.timeouts
            if self.judge(key, result.owner.id, right_at_start):
                tally.correct += 1
            else:
                tally.wrong += 1

        for start in range(0, count, parallel):
            async with trio.open_nursery() as batch:
                for _ in range(min(parallel, count - start)):
                    batch.start_soon(one)
        return tally

    def install_ideal_routing(self) -> None:
        """Set every node's routing state to what a fully stabilized ring would hold."""
        by_id = self._by_id()
        ids = self._ids
        count = len(ids)
        for index, ident in enumerate(ids):
            node = by_id[ident]
            routing = node.routing
            if count == 1:
                routing.successors, routing.predecessor = [], None
                continue
            ideal = self.ideal_successors(node, by_id)
            routing.set_successors(ideal[0], ideal[1:])
            routing.set_predecessor(by_id[ids[index - 1]].me)
            finger = 0
            while True:
                owner = by_id[self.owner_id(node.space.finger_start(ident, finger))].me
                finger = routing.fill_fingers(finger, owner)
                if finger == 0:
                    break

    async def wait_until(self, condition: Callable[[], bool], timeout: float, poll: float = 0.5) -> float:
        """Poll condition in virtual time until true; return the time it took.
        Raise ConvergenceTimeout after `timeout` seconds."""
        start = trio.current_time()
        with trio.move_on_after(timeout):
            while not condition():
                await trio.sleep(poll)
            return trio.current_time() - start
        raise ConvergenceTimeout(f"condition not met within {timeout:g}s of virtual time")

    def random_node(self) -> ChordNode:
        return self.nodes[self.rng.choice(self._addresses)]  # live addresses, kept sorted

    def ref(self, ident: int) -> NodeRef:
        return self._by_id()[ident].me
