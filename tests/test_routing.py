"""Unit tests for dht.routing: NodeRef wire shape, successor-list merging and RoutingTable.

Pure logic, no I/O. Most checks use an 8-bit ring of seven nodes whose true finger
owners are computed by brute force.
"""

from __future__ import annotations

import pytest

from dht.ids import IdSpace
from dht.routing import (
    DepartedPeers,
    Forward,
    NodeRef,
    Owner,
    RoutingTable,
    merge_successor_list,
    refs_from_wire,
    refs_to_wire,
)

SPACE = IdSpace(8)
RING = [10, 50, 90, 130, 170, 210, 250]


def ref(node_id: int) -> NodeRef:
    return NodeRef(node_id, f"n{node_id}:7000")


def ids(nodes: list[NodeRef]) -> list[int]:
    return [n.id for n in nodes]


def true_successor(key: int, ring: list[int] = RING) -> int:
    """First ring member at or clockwise after key."""
    return min(ring, key=lambda n: SPACE.distance(key, n))


def true_fingers(me: int, ring: list[int] = RING) -> list[int | None]:
    owners: list[int | None] = []
    for i in range(SPACE.bits):
        owner = true_successor(SPACE.finger_start(me, i), ring)
        owners.append(None if owner == me else owner)
    return owners


def full_table(me: int, successors: int = 3) -> RoutingTable:
    """A converged table for `me` on RING: predecessor, successor list and fingers."""
    table = RoutingTable(ref(me), SPACE)
    pos = RING.index(me)
    after = [RING[(pos + k) % len(RING)] for k in range(1, successors + 1)]
    table.set_successors(ref(after[0]), [ref(i) for i in after[1:]])
    table.set_predecessor(ref(RING[pos - 1]))
    index = 0
    for _ in range(SPACE.bits):
        index = table.fill_fingers(index, ref(true_successor(SPACE.finger_start(me, index))))
        if index == 0:
            break
    return table


def in_arc_walk(x: int, a: int, b: int) -> bool:
    """x strictly inside the clockwise walk from a to b (whole circle minus a when a == b)."""
    y = a
    for _ in range(SPACE.size):
        y = (y + 1) % SPACE.size
        if y == b:
            return False
        if y == x:
            return True
    return False


# -- NodeRef -------------------------------------------------------------------------------


def test_noderef_to_wire_is_address_then_id() -> None:
    assert NodeRef(42, "h:1").to_wire() == ["h:1", 42]


FULL = IdSpace(256)


@pytest.mark.parametrize("value", [["h:1", 0], ("h:1", 2**256 - 1), ["x" * 262, 7]])
def test_noderef_from_wire_round_trip(value: list | tuple) -> None:
    node = NodeRef.from_wire(value, FULL)
    assert (node.address, node.id) == (value[0], value[1])
    assert NodeRef.from_wire(node.to_wire(), FULL) == node


@pytest.mark.parametrize(
    "value",
    [[], ["h:1"], ["h:1", 1, 2], [1, 1], [b"h:1", 1], ["h:1", -1], ["h:1", True], ["h:1", False],
     ["h:1", "1"], ["h:1", 1.0], "h:1", None, {"h:1": 1}, [1, "h:1"], ["", 7], ["x" * 263, 7],
     ["h:1", 2**256], ["h:1", 10**2000]],
)
def test_noderef_from_wire_rejects_bad_shapes(value: object) -> None:
    with pytest.raises(ValueError):
        NodeRef.from_wire(value, FULL)


def test_noderef_ids_must_fit_the_space() -> None:
    assert NodeRef.from_wire(["h:1", 255], IdSpace(8)).id == 255
    with pytest.raises(ValueError, match=r"2\^8"):
        NodeRef.from_wire(["h:1", 256], IdSpace(8))


def test_refs_round_trip() -> None:
    nodes = [ref(10), ref(50)]
    assert refs_to_wire(nodes) == [["n10:7000", 10], ["n50:7000", 50]]
    assert refs_from_wire(refs_to_wire(nodes), FULL) == nodes
    assert refs_from_wire((), FULL) == []


@pytest.mark.parametrize("value", ["h:1", None, {"a": 1}, 5, [["h:1", 1], ["h:2", -1]], [["h:1"]], [["h:1", 1]] * 301])
def test_refs_from_wire_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        refs_from_wire(value, FULL)


# -- merge_successor_list --------------------------------------------------------------------


def test_merge_dedupes_keeps_order_and_stops_at_self() -> None:
    merged = merge_successor_list(ref(10), ref(50), [ref(90), ref(50), ref(130), ref(90), ref(170)], 8)
    assert ids(merged) == [50, 90, 130, 170]
    # Past us the successor's list runs round the ring again: stop there.
    assert ids(merge_successor_list(ref(10), ref(50), [ref(90), ref(10), ref(50), ref(90)], 8)) == [50, 90]


def test_merge_truncates_to_size() -> None:
    merged = merge_successor_list(ref(10), ref(50), [ref(90), ref(130), ref(170)], 2)
    assert ids(merged) == [50, 90]


def test_merge_counts_only_kept_nodes_toward_size() -> None:
    merged = merge_successor_list(ref(10), ref(50), [ref(50), ref(90), ref(50), ref(130), ref(170)], 3)
    assert ids(merged) == [50, 90, 130]


def test_merge_when_successor_is_self() -> None:
    assert ids(merge_successor_list(ref(10), ref(10), [ref(50), ref(10)], 4)) == [50]
    assert merge_successor_list(ref(10), ref(10), [], 4) == []


# -- RoutingTable basics -----------------------------------------------------------------------


def test_successor_list_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RoutingTable(ref(10), SPACE, successor_list_size=0)


def test_empty_table_successor_is_self() -> None:
    table = RoutingTable(ref(10), SPACE)
    assert table.successor == ref(10)
    assert table.fingers == [None] * 8
    assert table.known_nodes() == []


def test_set_successors_caps_and_sets_successor() -> None:
    table = RoutingTable(ref(10), SPACE, successor_list_size=2)
    table.set_successors(ref(50), [ref(90), ref(130)])
    assert table.successor == ref(50)
    assert ids(table.successors) == [50, 90]


def test_set_predecessor_ignores_self() -> None:
    table = RoutingTable(ref(10), SPACE)
    table.set_predecessor(ref(10))
    assert table.predecessor is None
    table.set_predecessor(ref(250))
    assert table.predecessor == ref(250)


# -- owns / route --------------------------------------------------------------------------------


def test_lone_node_owns_everything() -> None:
    table = RoutingTable(ref(10), SPACE)
    assert all(table.owns(k) for k in range(SPACE.size))
    assert table.route(123) == Owner([ref(10)])


def test_owns_is_predecessor_to_me_half_open() -> None:
    table = full_table(10)
    for key in range(SPACE.size):
        expected = key == 10 or in_arc_walk(key, 250, 10)
        assert table.owns(key) == expected, key
    assert table.owns(0) and table.owns(10) and not table.owns(250) and not table.owns(11)


def test_node_with_successors_but_no_predecessor_owns_nothing_yet() -> None:
    table = RoutingTable(ref(10), SPACE)
    table.set_successors(ref(50), [])
    assert not any(table.owns(k) for k in range(SPACE.size))


def test_route_owned_key_returns_me_then_successors() -> None:
    table = full_table(10)
    assert table.route(5) == Owner([ref(10), ref(50), ref(90), ref(130)])


@pytest.mark.parametrize("key", [11, 30, 50])
def test_route_key_in_me_to_successor_is_owner(key: int) -> None:
    assert full_table(10).route(key) == Owner([ref(50), ref(90), ref(130)])


def test_route_forwards_closest_to_key_first() -> None:
    table = full_table(10)  # knows 50, 90, 130 (successors) and 170 (finger)
    assert table.route(200) == Forward([ref(170), ref(130), ref(90)])
    assert table.route(200, count=None) == Forward([ref(170), ref(130), ref(90), ref(50)])
    assert table.route(200, count=1) == Forward([ref(170)])
    assert table.route(51) == Forward([ref(50)])


def test_route_forward_excludes_nodes_at_or_past_key() -> None:
    table = full_table(10)
    result = table.route(130, count=None)
    assert isinstance(result, Forward)
    assert ids(result.nodes) == [90, 50]


def test_route_wraps_around_zero() -> None:
    table = full_table(210)  # successors 250, 10, 50; fingers 250, 50, 90
    assert table.route(5) == Forward([ref(250)])
    assert table.route(100, count=None) == Forward([ref(90), ref(50), ref(10), ref(250)])
    assert table.route(240) == Owner([ref(250), ref(10), ref(50)])


# -- closest_preceding vs brute force ----------------------------------------------------------


def hand_built_table() -> RoutingTable:
    table = RoutingTable(ref(100), SPACE, successor_list_size=3)
    table.set_successors(ref(120), [ref(121), ref(140)])
    for i, node in [(3, 108), (5, 140), (6, 170), (7, 240)]:
        table.fingers[i] = ref(node)
    table.learn(ref(104))  # distance 4: empty slot 2
    table.set_predecessor(ref(90))
    return table


def test_closest_preceding_matches_brute_force_for_every_key() -> None:
    table = hand_built_table()
    known = [120, 121, 140, 108, 170, 240, 104]
    assert sorted(ids(table.known_nodes())) == sorted(known + [90])
    for key in range(SPACE.size):
        expected = sorted((n for n in known if in_arc_walk(n, 100, key)), key=lambda n: (key - n) % SPACE.size)
        assert ids(table.closest_preceding(key, count=None)) == expected, key
        assert ids(table.closest_preceding(key)) == expected[:3], key


# -- fill_fingers ---------------------------------------------------------------------------------


def test_ring_true_fingers_are_as_expected() -> None:
    # starts of node 10: 11 12 14 18 26 42 74 138
    assert true_fingers(10) == [50, 50, 50, 50, 50, 50, 90, 170]


def test_fill_fingers_step_by_step() -> None:
    table = RoutingTable(ref(10), SPACE)
    assert table.fill_fingers(0, ref(50)) == 6  # 2^0..2^5 <= 40 < 2^6
    assert ids(table.fingers[:6]) == [50] * 6 and table.fingers[6:] == [None, None]
    assert table.fill_fingers(6, ref(90)) == 7  # 64 <= 80 < 128
    assert table.fill_fingers(7, ref(170)) == 0  # wraps past the last finger
    assert [f.id if f else None for f in table.fingers] == true_fingers(10)


def test_fill_fingers_does_not_touch_earlier_fingers() -> None:
    table = RoutingTable(ref(10), SPACE)
    assert table.fill_fingers(2, ref(50)) == 6
    assert table.fingers[:2] == [None, None]
    assert ids(table.fingers[2:6]) == [50] * 4


def test_fill_fingers_does_nothing_when_node_is_before_finger_start() -> None:
    table = RoutingTable(ref(10), SPACE)
    assert table.fill_fingers(6, ref(50)) == 6
    assert table.fingers == [None] * 8


@pytest.mark.parametrize("me", RING)
def test_fill_fingers_converges_to_true_fingers_on_ring(me: int) -> None:
    table = full_table(me)
    assert [f.id if f else None for f in table.fingers] == true_fingers(me)


def test_fill_fingers_with_self_clears_the_rest() -> None:
    table = full_table(10)
    assert table.fill_fingers(3, ref(10)) == 0
    assert ids(table.fingers[:3]) == [50, 50, 50]
    assert table.fingers[3:] == [None] * 5
    assert 170 not in ids(table.closest_preceding(200, count=None))


# -- learn --------------------------------------------------------------------------------------------


def test_learn_puts_hint_in_floor_log2_slot() -> None:
    table = RoutingTable(ref(10), SPACE)
    table.learn(ref(50))  # distance 40 -> slot 5
    table.learn(ref(11))  # distance 1 -> slot 0
    table.learn(ref(9))  # distance 255 -> slot 7
    assert ids([table.fingers[i] for i in (0, 5, 7)]) == [11, 50, 9]
    assert table.finger_count() == 3
    assert sum(f is not None for f in table.fingers) == 3


def test_learn_keeps_the_node_closer_to_finger_start() -> None:
    table = RoutingTable(ref(10), SPACE)  # slot 5 starts at 42
    table.learn(ref(50))
    table.learn(ref(60))  # 18 past start: worse than 50 (8 past)
    assert table.fingers[5] == ref(50)
    table.learn(ref(45))  # 3 past start: better
    assert table.fingers[5] == ref(45)
    table.learn(ref(42))  # exactly the start: best
    assert table.fingers[5] == ref(42)


def test_learn_wraps_and_ignores_self() -> None:
    table = RoutingTable(ref(250), SPACE)
    table.learn(ref(10))  # distance 16 -> slot 4
    table.learn(ref(250))
    assert table.fingers[4] == ref(10)
    assert table.finger_count() == 1


def test_learn_makes_node_routable() -> None:
    table = full_table(10)
    assert table.closest_preceding(48, count=None) == []
    table.learn(ref(45))  # slot 5 (start 42): 3 past start beats 50 (8 past)
    assert table.fingers[5] == ref(45)
    assert table.closest_preceding(48, count=None) == [ref(45)]


# -- forget ----------------------------------------------------------------------------------------


def test_forget_removes_from_successors_and_fingers() -> None:
    table = full_table(10)
    assert 50 in ids(table.closest_preceding(80, count=None))  # warms the candidate cache
    assert table.forget(50) is True
    assert ids(table.successors) == [90, 130]
    assert all(f is None or f.id != 50 for f in table.fingers)
    assert table.predecessor == ref(250)
    assert 50 not in ids(table.closest_preceding(80, count=None))
    assert table.route(70) == Owner([ref(90), ref(130)])


def test_forget_removes_predecessor() -> None:
    table = full_table(10)
    assert table.forget(250) is True
    assert table.predecessor is None
    assert 250 not in ids(table.known_nodes())


def test_forget_finger_only_node() -> None:
    table = full_table(10)
    assert table.route(200, count=1) == Forward([ref(170)])  # warms the candidate cache
    assert table.forget(170) is True
    assert 170 not in ids(table.known_nodes())
    assert table.route(200, count=1) == Forward([ref(130)])


def test_forget_unknown_returns_false_and_changes_nothing() -> None:
    table = full_table(10)
    before = (list(table.successors), list(table.fingers), table.predecessor)
    assert table.forget(77) is False
    assert table.forget(10) is False
    assert (table.successors, table.fingers, table.predecessor) == before


# -- finger_count / known_nodes ----------------------------------------------------------------


def test_finger_count_counts_distinct_nodes() -> None:
    table = full_table(10)  # fingers 50 x6, 90, 170
    assert table.finger_count() == 3


def test_known_nodes_distinct_with_predecessor() -> None:
    table = full_table(10)
    known = ids(table.known_nodes())
    assert sorted(known) == [50, 90, 130, 170, 250]
    assert len(known) == len(set(known))


def test_known_nodes_predecessor_listed_once_when_also_successor() -> None:
    table = RoutingTable(ref(10), SPACE)
    table.set_successors(ref(50), [ref(10)])
    table.set_predecessor(ref(50))
    table.learn(ref(50))
    assert table.known_nodes() == [ref(50)]


def test_departed_peers_are_probed_when_due_and_dropped_when_they_answer() -> None:
    departed = DepartedPeers(capacity=3, first_retry=1.0, max_retry=8.0)
    a, b = NodeRef(1, "a"), NodeRef(2, "b")
    departed.remember(a, now=0.0)
    departed.remember(b, now=0.5)
    departed.remember(a, now=0.7)  # already remembered: keeps its place and its time
    assert departed.next_to_probe(0.9) is None  # nobody due yet
    assert departed.next_to_probe(1.2) == a
    departed.probe_failed(a, now=1.2)  # next probe of a at 1.2 + 2
    assert departed.next_to_probe(1.6) == b and len(departed) == 2
    departed.discard(b.id)  # it answered
    assert departed.next_to_probe(3.0) is None and departed.next_to_probe(3.3) == a and b.id not in departed


def test_departed_peer_probes_back_off_to_max_retry_and_expire_after_max_age() -> None:
    departed = DepartedPeers(capacity=2, first_retry=1.0, max_retry=8.0, max_age=100.0)
    a, b, c = NodeRef(1, "a"), NodeRef(2, "b"), NodeRef(3, "c")
    departed.remember(a, now=0.0)
    now, gaps = 1.0, []
    for _ in range(6):
        assert departed.next_to_probe(now) == a
        departed.probe_failed(a, now)
        following = now
        while departed.next_to_probe(following) is None:
            following += 0.5
        gaps.append(following - now)
        now = following
    assert gaps == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]  # doubling, capped: a long partition still heals
    assert departed.next_to_probe(101.0) is None and a.id not in departed  # lost too long ago
    for node in (a, b, c):
        departed.remember(node, now=200.0)
    assert len(departed) == 2 and a.id not in departed  # the oldest memory went
    with pytest.raises(ValueError):
        DepartedPeers(capacity=0)


def test_owner_answer_in_a_ring_smaller_than_the_list_ends_with_the_answerer() -> None:
    # Ring 10 -> 50 -> 90 -> 10: 10's list ran round to its predecessor, so after
    # the owner 50 come 90 and then 10 itself (the replica set a client needs).
    table = RoutingTable(ref(10), SPACE)
    table.set_successors(ref(50), [ref(90), ref(10)])
    table.set_predecessor(ref(90))
    assert table.route(30) == Owner([ref(50), ref(90), ref(10)])
