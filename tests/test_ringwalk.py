"""Ring walking and judging: `ring_problems` and `render_ring` on hand-built views
(8-bit IDs, no network), `NodeInfo.from_wire`, and one `walk` over a simulated ring.
"""

from __future__ import annotations

import dataclasses

import random
from typing import Any

import pytest
from trio.testing import MockClock

from dht.ids import IdSpace
from dht.routing import NodeRef
from dht.errors import BadReply
from dht.messages import NodeInfo
from tools.ringwalk import RingView, render_ring, ring_problems, walk

from .conftest import ClusterFactory

SPACE = IdSpace(8)
A, B, C, D = NodeRef(0x10, "a:1"), NodeRef(0x50, "b:2"), NodeRef(0x90, "c:3"), NodeRef(0xD0, "d:4")
RING = [A, B, C, D]


def info(me: NodeRef, predecessor: NodeRef | None, successors: list[NodeRef], fingers: list[NodeRef] | None = None) -> NodeInfo:
    return NodeInfo(me=me, bits=8, predecessor=predecessor, successors=successors, fingers=fingers or [])


def consistent_ring() -> list[NodeInfo]:
    """A, B, C, D in ID order, each pointing at its true neighbours."""
    return [info(node, RING[i - 1], [RING[(i + 1) % 4], RING[(i + 2) % 4]], [RING[(i + 1) % 4]]) for i, node in enumerate(RING)]


# -- ring_problems -----------------------------------------------------------------------


def test_consistent_ring_has_no_problems() -> None:
    assert ring_problems(RingView(consistent_ring())) == []


def test_single_node_pointing_at_itself_is_consistent() -> None:
    assert ring_problems(RingView([info(A, None, [])])) == []
    assert ring_problems(RingView([info(A, None, [A])])) == []


def test_single_node_with_a_predecessor_is_a_problem() -> None:
    problems = ring_problems(RingView([info(A, B, [])]))
    assert problems == ["a:1: predecessor is b:2, should be none"]


def test_wrong_successor_names_node_actual_and_expected() -> None:
    nodes = consistent_ring()
    nodes[1] = info(B, A, [D, A])  # B skips C
    problems = ring_problems(RingView(nodes))
    assert problems == ["b:2: successor is d:4, should be c:3"]


def test_wrong_predecessor_names_node_actual_and_expected() -> None:
    nodes = consistent_ring()
    nodes[2] = info(C, A, [D, A])  # C thinks A precedes it, but B does
    problems = ring_problems(RingView(nodes))
    assert problems == ["c:3: predecessor is a:1, should be b:2"]


def test_missing_predecessor_in_a_larger_ring_is_reported_as_none() -> None:
    nodes = consistent_ring()
    nodes[3] = info(D, None, [A, B])
    assert ring_problems(RingView(nodes)) == ["d:4: predecessor is none, should be c:3"]


def test_pointer_to_an_unreachable_address_is_labelled_not_answering() -> None:
    dead = NodeRef(0x70, "dead:9")  # between B and C; crashed, so missing from nodes
    nodes = consistent_ring()
    nodes[1] = info(B, A, [dead, C])
    nodes[2] = info(C, dead, [D, A])
    problems = ring_problems(RingView(nodes, unreachable={"dead:9"}))
    assert problems == [
        "b:2: successor is dead:9 (not answering), should be c:3",
        "c:3: predecessor is dead:9 (not answering), should be b:2",
    ]


def test_ring_problems_trusts_the_view_to_be_sorted_by_id() -> None:
    """`walk` sorts by ID; ring_problems does not, so an unsorted view of a good
    ring looks broken."""
    nodes = consistent_ring()
    shuffled = [nodes[2], nodes[0], nodes[3], nodes[1]]
    assert ring_problems(RingView(shuffled)) != []
    assert ring_problems(RingView(sorted(shuffled, key=lambda n: n.me.id))) == []


# -- render_ring --------------------------------------------------------------------------


def columns(header: str) -> list[int]:
    return [header.index(name) for name in ("ADDRESS", "ID", "PREDECESSOR", "SUCCESSOR", "FINGERS", "STORED")]


def cells(line: str, starts: list[int]) -> list[str]:
    ends = [*starts[1:], None]
    return [line[start:end].strip() for start, end in zip(starts, ends)]


def test_render_ring_is_an_aligned_table_in_view_order() -> None:
    nodes = consistent_ring()
    nodes[0] = info(A, None, [B], [B, C, D])
    nodes[1] = info(NodeRef(0x50, "a-much-longer-host:65535"), A, [C])
    nodes[2] = dataclasses.replace(nodes[2], store={"blocks": 3, "used": 3 * 1024**2, "capacity": 4 * 1024**3})
    nodes[3] = dataclasses.replace(nodes[3], store={"blocks": 1, "used": 700, "capacity": 0})
    lines = render_ring(RingView(nodes), SPACE)
    assert len(lines) == 5
    header, *rows = lines
    starts = columns(header)
    assert starts[0] == 0 and starts == sorted(starts)
    assert [cells(row, starts) for row in rows] == [
        ["a:1", "10", "-", "b:2", "3", "-"],
        ["a-much-longer-host:65535", "50", "a:1", "c:3", "0", "-"],
        ["c:3", "90", "b:2", "d:4", "1", "3.0MiB/4.0GiB"],
        ["d:4", "d0", "c:3", "a:1", "1", "700B"],
    ]
    for row in rows:  # every cell starts exactly at its column, after at least two spaces
        for start in starts[1:]:
            assert row[start - 2 : start] == "  " and row[start] != " "
    assert all(line == line.rstrip() for line in lines)


def test_render_ring_short_id_is_eight_hex_digits_at_full_width() -> None:
    node = NodeRef(0xDEADBEEF << 224 | 12345, "x:1")
    header, row = render_ring(RingView([NodeInfo(node, 256, None, [], [])]), IdSpace(256))
    assert cells(row, columns(header)) == ["x:1", "deadbeef", "-", "x:1", "0", "-"]


def test_render_empty_view_is_just_the_header() -> None:
    assert render_ring(RingView(), SPACE) == ["ADDRESS  ID  PREDECESSOR  SUCCESSOR  FINGERS  STORED"]


# -- NodeInfo.from_wire -------------------------------------------------------------------


def test_from_wire_round_trips_the_info_reply_shape() -> None:
    reply: dict[str, Any] = {
        "address": "b:2",
        "id": 0x50,
        "bits": 8,
        "predecessor": A.to_wire(),
        "successors": [C.to_wire(), D.to_wire()],
        "fingers": [C.to_wire(), A.to_wire()],
        "store": {"blocks": 3},
    }
    decoded = NodeInfo.from_wire(reply)
    assert decoded == NodeInfo(me=B, bits=8, predecessor=A, successors=[C, D], fingers=[C, A], store={"blocks": 3})
    assert decoded.successor == C
    assert decoded.to_wire() == reply


def test_from_wire_lone_node_has_no_predecessor_and_is_its_own_successor() -> None:
    decoded = NodeInfo.from_wire({"address": "a:1", "id": 0x10, "bits": 8, "predecessor": None, "successors": [], "fingers": []})
    assert decoded.predecessor is None and decoded.successor == A


@pytest.mark.parametrize("value", [None, [], ["a:1", 16], "info", 42])
def test_from_wire_rejects_a_non_map(value: object) -> None:
    with pytest.raises(BadReply, match="expected a map"):
        NodeInfo.from_wire(value)


@pytest.mark.parametrize("change", [{"bits": 10**2000}, {"id": 2**8}, {"successors": "x"}, {"store": {"blocks": -1}}, {"bits": None}])
def test_from_wire_rejects_bad_fields_without_crashing(change: dict[str, Any]) -> None:
    reply = {"address": "a:1", "id": 0x10, "bits": 8, "predecessor": None, "successors": [], "fingers": [], **change}
    with pytest.raises(BadReply):
        NodeInfo.from_wire(reply)


# -- walk over a simulated ring -------------------------------------------------------------


async def test_walk_finds_the_ring_then_the_crashed_nodes_then_the_healed_ring(
    make_cluster: ClusterFactory, autojump_clock: MockClock
) -> None:
    cluster = make_cluster()
    await cluster.grow(12)
    await cluster.wait_until(cluster.is_converged, 60)
    rng = random.Random(7)
    victims = rng.sample(sorted(cluster.nodes), 2)
    via = next(address for address in sorted(cluster.nodes) if address not in victims)
    asker = cluster.nodes[next(address for address in sorted(cluster.nodes) if address not in victims and address != via)]

    view = await walk(asker.transport, via)
    assert [n.me.id for n in view.nodes] == cluster.ids  # all 12, sorted by ID
    assert {n.me.address for n in view.nodes} == set(cluster.nodes)
    assert view.unreachable == set()
    assert ring_problems(view) == []

    for address in victims:
        cluster.crash(address)
    # A short per-call timeout finishes the walk before any node can notice the crash.
    view = await walk(asker.transport, via, timeout=0.05)
    assert len(view.nodes) == 10 and view.unreachable == set(victims)
    problems = ring_problems(view)
    assert problems
    text = "\n".join(problems)
    for address in victims:
        assert f"{address} (not answering)" in text

    await cluster.wait_until(cluster.is_converged, 60)
    view = await walk(asker.transport, via)
    assert [n.me.id for n in view.nodes] == cluster.ids
    assert ring_problems(view) == []
