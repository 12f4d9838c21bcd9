"""The oracle in `dht.simcluster.SimCluster` judging hand-built rings.

No protocol runs here: nodes get the ideal routing state from `add_stable_nodes`,
a test breaks one pointer by hand, and the oracle's verdicts are checked.
`make_cluster` needs a MockClock, so every test takes `autojump_clock`.
"""

from __future__ import annotations

from trio.testing import MockClock

from dht.merkle import block_hash
from dht.node import ChordNode, NodeConfig
from dht.simcluster import SimCluster
from dht.storage import StorageConfig

from .conftest import ClusterFactory

SMALL = NodeConfig(bits=8)


def ring_order(cluster: SimCluster) -> list[ChordNode]:
    """Live nodes sorted by ID."""
    by_id = {node.me.id: node for node in cluster.nodes.values()}
    return [by_id[ident] for ident in cluster.ids]


def assert_ideal(cluster: SimCluster) -> None:
    assert cluster.ring_errors() == []
    assert cluster.is_converged()
    assert cluster.fingers_converged()
    assert cluster.successor_lists_full()


async def test_stable_nodes_have_ideal_routing(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    nodes = cluster.add_stable_nodes(12)
    assert len(cluster.nodes) == 12 and cluster.ids == sorted(node.me.id for node in nodes)
    assert_ideal(cluster)
    assert all(len(node.routing.successors) == 8 for node in nodes)


async def test_single_node_ring_is_converged(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(config=SMALL)
    [node] = cluster.add_stable_nodes(1)
    assert_ideal(cluster)
    assert {cluster.owner_id(key) for key in (0, node.me.id, 255)} == {node.me.id}


async def test_wrong_successor_is_named(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(8)
    ring = ring_order(cluster)
    victim, true_next, skipped_to = ring[3], ring[4], ring[5]
    victim.routing.successors = [skipped_to.me, *victim.routing.successors[2:]]
    assert cluster.ring_errors() == [
        f"{victim.me.address}: successor {skipped_to.me.id:x} should be {true_next.me.id:x}"
    ]
    assert not cluster.is_converged()
    assert cluster.fingers_converged()  # fingers are untouched
    cluster.install_ideal_routing()
    assert_ideal(cluster)


async def test_wrong_predecessor_is_named(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(8)
    ring = ring_order(cluster)
    victim, true_previous = ring[0], ring[-1]  # the smallest ID: its predecessor wraps
    victim.routing.set_predecessor(ring[5].me)
    [error] = cluster.ring_errors()
    assert error.startswith(f"{victim.me.address}: predecessor ")
    assert error.endswith(f"should be {true_previous.me.id:x}")
    assert not cluster.is_converged()


async def test_wrong_predecessor_is_named_in_hex(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(4)
    ring = ring_order(cluster)
    ring[1].routing.set_predecessor(ring[2].me)
    assert cluster.ring_errors() == [
        f"{ring[1].me.address}: predecessor {ring[2].me.id:x} should be {ring[0].me.id:x}"
    ]


async def test_missing_predecessor_is_an_error(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(5)
    ring = ring_order(cluster)
    ring[2].routing.set_predecessor(None)
    assert cluster.ring_errors() == [f"{ring[2].me.address}: predecessor none should be {ring[1].me.id:x}"]


async def test_crashed_node_leaves_two_stale_pointers(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(6)
    before, gone, after = ring_order(cluster)[1:4]
    cluster.crash(gone.me.address)
    successor_error, predecessor_error = cluster.ring_errors()
    assert successor_error == f"{before.me.address}: successor {gone.me.id:x} should be {after.me.id:x}"
    assert predecessor_error.startswith(f"{after.me.address}: predecessor ")
    assert predecessor_error.endswith(f"should be {before.me.id:x}")
    assert not cluster.fingers_converged()
    cluster.install_ideal_routing()
    assert_ideal(cluster)


async def test_cleared_finger_breaks_only_fingers(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    nodes = cluster.add_stable_nodes(8)
    nodes[2].routing.fingers[0] = None  # finger 0 is the successor, never the node itself
    assert not cluster.fingers_converged()
    assert cluster.ring_errors() == [] and cluster.is_converged() and cluster.successor_lists_full()


async def test_wrong_finger_breaks_fingers(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(8)
    node = ring_order(cluster)[4]
    last = len(node.routing.fingers) - 1  # points half-way round: never the node's successor
    assert node.routing.fingers[last] != node.routing.successor
    node.routing.fingers[last] = node.routing.successor
    assert not cluster.fingers_converged()
    assert cluster.is_converged()


async def test_short_successor_list_is_not_full(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    nodes = cluster.add_stable_nodes(12)
    nodes[7].routing.successors = nodes[7].routing.successors[:3]
    assert not cluster.successor_lists_full()
    assert cluster.is_converged() and cluster.fingers_converged()


async def test_small_ring_wants_a_shorter_successor_list(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster()
    nodes = cluster.add_stable_nodes(4)  # a list of 8 cannot be filled by 3 other nodes
    assert all(len(node.routing.successors) == 3 for node in nodes)
    assert cluster.successor_lists_full()
    nodes[0].routing.successors = nodes[0].routing.successors[:2]
    assert not cluster.successor_lists_full()


async def test_owner_id_in_a_small_id_space(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(config=SMALL)
    cluster.add_stable_nodes(6)
    ids = cluster.ids
    assert len(ids) == 6 and all(0 <= ident < 256 for ident in ids)
    for index, ident in enumerate(ids):
        assert cluster.owner_id(ident) == ident  # a node owns its own ID
        if index + 1 < len(ids):
            assert cluster.owner_id(ident + 1) == ids[index + 1]  # just above: the next node
        if index > 0:
            assert cluster.owner_id(ident - 1) == (ids[index - 1] if ident - 1 == ids[index - 1] else ident)
            assert cluster.owner_id(ids[index - 1] + 1) == ident
    assert ids[-1] < 255, "the wrap-around check below needs keys above the largest ID"
    for key in range(ids[-1] + 1, 256):  # past the largest ID: wraps to the smallest
        assert cluster.owner_id(key) == ids[0]
    assert cluster.owner_id(0) == ids[0]


async def test_owner_id_matches_brute_force(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(config=SMALL)
    cluster.add_stable_nodes(9)
    ids = cluster.ids
    for key in range(256):
        expected = min((ident for ident in ids if ident >= key), default=ids[0])
        assert cluster.owner_id(key) == expected


async def test_live_copies_counts_exactly(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = make_cluster(storage=StorageConfig(replicas=3))
    nodes = cluster.add_stable_nodes(5)
    stores = [cluster.services[node.me.address].store for node in nodes]
    blocks = {name: (block_hash(name), name) for name in (b"twice", b"once", b"never", b"stray")}
    key = {name: pair[0] for name, pair in blocks.items()}
    for store in (stores[0], stores[3]):
        await store.put(*blocks[b"twice"])
    await stores[1].put(*blocks[b"once"])
    await stores[4].put(*blocks[b"stray"])  # stored but not asked about

    asked = {key[b"twice"], key[b"once"], key[b"never"]}
    assert cluster.live_copies(asked) == {key[b"twice"]: 2, key[b"once"]: 1, key[b"never"]: 0}
    assert cluster.live_copies(set()) == {}
    assert cluster.copies(key[b"twice"]) == 2 and cluster.copies(key[b"stray"]) == 1

    cluster.crash(nodes[3].me.address)  # its memory goes with it
    assert cluster.live_copies(asked) == {key[b"twice"]: 1, key[b"once"]: 1, key[b"never"]: 0}
    cluster.crash(nodes[1].me.address)
    assert cluster.live_copies(asked)[key[b"once"]] == 0
