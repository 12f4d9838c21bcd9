"""Virtual nodes: several ring positions per process, on the simulated network.
Real node and storage code, virtual time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from dht.addresses import MAX_VNODES, host_of, vnode_address, vnode_index
from dht.errors import BadRequest, Forbidden, ProtocolError
from dht.identity import PeerIdentity, Role, gives_position
from dht.ids import IdSpace
from dht.loadbalance import keys_per_machine, load_figures
from dht.messages import list_digest, notify_args
from dht.routing import NodeRef, distinct_hosts, merge_successor_list
from dht.simcluster import SimCluster
from dht.storage import StorageConfig
from dht.wire import encode_request, parse_request

from .conftest import ClusterFactory

R = 3
MANUAL = StorageConfig(replicas=R, repair_interval=10_000)
SPACE = IdSpace()


# -- the pure parts -------------------------------------------------------------------------


def test_addresses_name_a_process_and_its_positions() -> None:
    assert [vnode_address("10.0.0.1:7000", i) for i in (0, 1, 63)] == ["10.0.0.1:7000", "10.0.0.1:7000/1", "10.0.0.1:7000/63"]
    assert host_of("[::1]:7000/5") == "[::1]:7000" and vnode_index("[::1]:7000/5") == 5 and vnode_index("h:1") == 0
    for bad in ("h:1/0", "h:1/64", "h:1/007", "h:1/-1", "h:1/", "h:1/x", "h:1/" + "9" * 5000, "h:1/１"):
        with pytest.raises(ValueError):
            vnode_index(bad)
    with pytest.raises(ValueError):
        vnode_address("h:1", MAX_VNODES)


def test_vnode_ids_follow_from_the_first_and_only_the_certificate_holder_may_claim_them() -> None:
    base = SPACE.node_id("10.0.0.1:7000")
    ids = [SPACE.vnode_id(base, i) for i in range(8)]
    assert ids[0] == base and len(set(ids)) == 8 and ids == [SPACE.vnode_id(base, i) for i in range(8)]
    holder = PeerIdentity(Role.NODE, "n", base)
    assert gives_position(holder, NodeRef(ids[3], "10.0.0.1:7000/3"), SPACE)
    assert not gives_position(holder, NodeRef(ids[3], "10.0.0.1:7000/4"), SPACE)  # another position's ID
    assert not gives_position(holder, NodeRef(ids[3] + 1, "10.0.0.1:7000/3"), SPACE)
    assert not gives_position(holder, NodeRef(ids[3], "10.0.0.1:7000/99"), SPACE)
    assert not gives_position(PeerIdentity(Role.NODE, "m", base + 1), NodeRef(ids[3], "x:1/3"), SPACE)


def test_successor_lists_and_replica_sets_hold_one_position_per_process() -> None:
    me = NodeRef(10, "a:1")
    ring = [NodeRef(20, "a:1/2"), NodeRef(30, "b:1"), NodeRef(40, "b:1/3"), NodeRef(50, "a:1/1"), NodeRef(60, "c:1/2"), NodeRef(70, "d:1")]
    merged = merge_successor_list(me, ring[0], ring[1:], 8)
    assert merged == [ring[0], ring[1], ring[4], ring[5]]  # the true successor first, even when it is ours
    assert distinct_hosts(merged, 2, besides=me.address) == [ring[1], ring[4]]
    assert distinct_hosts([me, *merged], 3) == [me, ring[1], ring[4]]


@given(st.lists(st.tuples(st.integers(0, 2**32), st.sampled_from("abcdef"), st.integers(0, 3)), min_size=1, max_size=40))
def test_merged_lists_never_repeat_a_process(entries: list[tuple[int, str, int]]) -> None:
    nodes = [NodeRef(ident, vnode_address(f"{host}:1", index)) for ident, host, index in entries]
    merged = merge_successor_list(NodeRef(2**33, "z:1"), nodes[0], nodes[1:], 8)
    assert len({host_of(node.address) for node in merged}) == len(merged) <= 8


def test_requests_name_a_position_or_none() -> None:
    assert parse_request(encode_request(7, "ping", [])[4:]).vnode == 0
    assert parse_request(encode_request(7, "ping", [], vnode=5)[4:]).vnode == 5
    from dht.wire import pack

    for vnode in (-1, MAX_VNODES, True, "1", 2**70, None):
        with pytest.raises(ProtocolError):
            parse_request(pack([7, "ping", [], vnode]))
    with pytest.raises(ProtocolError):
        parse_request(pack([7, "ping", [], 1, 2]))


def test_notify_names_the_list_it_holds_by_a_checked_digest() -> None:
    me = NodeRef(5, "a:1")
    nodes = [NodeRef(6, "b:1"), NodeRef(7, "c:1")]
    caller = PeerIdentity(Role.NODE, "", None, authenticated=False)
    assert notify_args([me.to_wire(), list_digest(nodes)], SPACE, caller) == (me, list_digest(nodes))
    assert list_digest(nodes) != list_digest(nodes[:1])
    for digest in (b"short", "text", 12, b"x" * 9):
        with pytest.raises(BadRequest):
            notify_args([me.to_wire(), digest], SPACE, caller)
    with pytest.raises(Forbidden):
        notify_args([me.to_wire()], SPACE, PeerIdentity(Role.NODE, "n", 99))


def test_load_figures_count_machines_that_own_nothing() -> None:
    positions = [(10, "a"), (20, "b"), (30, "a"), (40, "c")]
    counts = keys_per_machine(positions, [5, 15, 25, 35, 45, 11])
    assert counts == {"a": 3, "b": 2, "c": 1}  # 45 wraps round to the first position
    figures = load_figures([0, 0, 3, 9])
    assert figures["load_mean"] == 3 and figures["load_p99_over_mean"] == 3 and figures["load_p1"] == 0


# -- the simulated ring ---------------------------------------------------------------------


async def vnode_ring(make_cluster: ClusterFactory, hosts: int, vnodes: int, storage: StorageConfig | None = None) -> SimCluster:
    cluster = make_cluster(storage=storage, vnodes=vnodes)
    await cluster.grow(hosts)
    await cluster.wait_until(lambda: cluster.is_converged() and cluster.successor_lists_right(), 120)
    return cluster


async def test_positions_join_converge_and_answer_lookups(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await vnode_ring(make_cluster, hosts=10, vnodes=4)
    assert len(cluster.nodes) == 10 and len(cluster.ids) == 40
    tally = await cluster.run_lookups(200)
    assert tally.correct == 200, tally.summary()


def holders(cluster: SimCluster, key: bytes) -> list[str]:
    return [address for address, service in cluster.services.items() if key in service.store]


async def put_blocks(cluster: SimCluster, count: int) -> set[bytes]:
    from dht.merkle import block_hash

    client = cluster.client()
    keys = set()
    for number in range(count):
        data = random.Random(number).randbytes(100 + number)
        await client.put_block(data)
        keys.add(block_hash(data))
    return keys


async def test_copies_go_to_distinct_machines(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await vnode_ring(make_cluster, hosts=6, vnodes=8, storage=MANUAL)
    keys = await put_blocks(cluster, 60)
    for key in keys:
        assert len(holders(cluster, key)) == R
    await cluster.repair_all()  # repair neither adds a copy on a machine that has one nor drops a needed one
    assert all(len(holders(cluster, key)) == R for key in keys)


async def test_crashes_and_repair_lose_nothing(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await vnode_ring(make_cluster, hosts=8, vnodes=4, storage=MANUAL)
    keys = await put_blocks(cluster, 80)
    for victim in sorted(cluster.nodes)[:2]:  # two machines, eight positions
        cluster.crash(victim)
    await cluster.wait_until(lambda: cluster.is_converged() and cluster.successor_lists_right(), 120)
    for _ in range(3):
        await cluster.repair_all()
    assert all(len(holders(cluster, key)) == R for key in keys)


async def test_graceful_leave_hands_every_arc_to_its_successors(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await vnode_ring(make_cluster, hosts=7, vnodes=4, storage=MANUAL)
    keys = await put_blocks(cluster, 80)
    leaver = sorted(cluster.nodes)[3]
    held = {key for key in keys if leaver in holders(cluster, key)}
    await cluster.leave(leaver)
    assert held and all(len(holders(cluster, key)) >= R for key in keys)
    await cluster.wait_until(lambda: cluster.is_converged() and cluster.successor_lists_right(), 120)
    await cluster.repair_all()
    assert all(len(holders(cluster, key)) == R for key in keys)
    assert all(host_of(a) == a for key in keys for a in holders(cluster, key))


async def test_one_finger_timer_fills_every_positions_own_fingers(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    cluster = await vnode_ring(make_cluster, hosts=6, vnodes=4)
    await cluster.wait_until(cluster.fingers_converged, 600)
    assert all(node.routing.finger_count() > 0 for node in cluster.positions.values())
    before = cluster.network.stats.by_method.get("step", 0)
    await cluster.run_lookups(100)
    assert cluster.network.stats.by_method.get("step", 0) - before < 100 * 6  # short routes: fingers of its own per position
