"""A lookup believes an owner only once the owner confirms that its own arc holds
the key (issue 13: a failed lookup is better than a wrong one).

Unit tests drive `confirm_owner` and `iterate` with scripted arcs and steps; the
simulated-ring tests hide a node from everyone but its successor (as just after a
join, before the predecessor hears of it) and from a node that lost its routing
state, and check that lookups still name the true owner."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from dht.errors import BadReply, LookupFailed, TransportError
from dht.ids import IdSpace
from dht.lookup import confirm_owner, iterate
from dht.routing import NodeRef
from dht.simcluster import SimCluster

from .conftest import ClusterFactory

SPACE = IdSpace(8)


def ref(ident: int) -> NodeRef:
    return NodeRef(ident, f"n{ident}:1")


def arcs(table: dict[int, tuple[int | None, list[int]] | None]):  # type: ignore[no-untyped-def]
    """An Arc from {node: (predecessor, successors)}; None makes the node unreachable.
    `asked` lists the nodes asked, a predecessor asked patiently as its negative ID."""
    asked: list[int] = []

    async def arc(node: NodeRef, patient: bool) -> tuple[NodeRef | None, list[NodeRef]]:
        asked.append(-node.id if patient else node.id)
        entry = table[node.id]
        if entry is None:
            raise TransportError(f"{node.address} is down")
        predecessor, successors = entry
        return (None if predecessor is None else ref(predecessor)), [ref(s) for s in successors]

    return arc, asked


async def test_a_named_owner_that_holds_the_key_confirms_it() -> None:
    arc, asked = arcs({50: (40, [60, 70])})
    assert await confirm_owner(SPACE, 45, [ref(50), ref(60)], arc, set()) == [ref(50), ref(60), ref(70)]
    assert asked == [50]


async def test_a_joiner_the_hop_does_not_know_yet_is_found_through_the_owners_predecessor() -> None:
    """The hop (40) still names 50, but 47 joined and told 50: key 45 is 47's."""
    arc, asked = arcs({50: (47, [60]), 47: (40, [50, 60])})
    assert await confirm_owner(SPACE, 45, [ref(50)], arc, set()) == [ref(47), ref(50), ref(60)]
    assert asked == [50, -47]  # the predecessor patiently: taking it for dead would name 50


async def test_a_dead_predecessor_leaves_the_node_after_it_as_owner() -> None:
    arc, _ = arcs({50: (47, [60]), 47: None})
    dead: set[int] = set()
    assert await confirm_owner(SPACE, 45, [ref(50)], arc, dead) == [ref(50), ref(60)]
    assert dead == {47}


async def test_a_predecessor_this_lookup_found_silent_is_asked_again() -> None:
    """A lost message is not a dead node: 50 still counts on 47, so 47 is asked
    (patiently) rather than skipped, and it owns key 45."""
    arc, asked = arcs({50: (47, [60]), 47: (40, [50, 60])})
    dead = {47}
    assert await confirm_owner(SPACE, 45, [ref(50)], arc, dead) == [ref(47), ref(50), ref(60)]
    assert asked == [50, -47] and dead == set()


async def test_a_named_owner_that_is_down_is_reported_to_the_caller() -> None:
    arc, _ = arcs({50: None})
    with pytest.raises(TransportError):
        await confirm_owner(SPACE, 45, [ref(50)], arc, set())


async def test_a_named_owner_that_knows_nobody_is_not_believed() -> None:
    arc, _ = arcs({50: (None, [])})
    with pytest.raises(BadReply):
        await confirm_owner(SPACE, 45, [ref(50)], arc, set())


async def test_the_walk_back_passes_several_joiners() -> None:
    arc, asked = arcs({50: (48, [60]), 48: (46, [50]), 46: (30, [48])})
    assert (await confirm_owner(SPACE, 45, [ref(50)], arc, set()))[0] == ref(46)
    assert asked == [50, -48, -46]


async def test_a_walk_that_never_ends_fails_within_its_bound() -> None:
    table: dict[int, tuple[int | None, list[int]] | None] = {node: (node - 1, [node + 1]) for node in range(100, 130)}
    arc, asked = arcs(table)
    with pytest.raises(LookupFailed):
        await confirm_owner(SPACE, 60, [ref(129)], arc, set())
    assert len(asked) == 16


async def test_iterate_asks_the_hop_again_when_its_named_owner_is_down() -> None:
    """Hop 40 names 50 (down); told 50 is dead, it names 60, which confirms."""

    async def step(hop: NodeRef, key: int, dead: frozenset[int]) -> tuple[bool, list[NodeRef]]:
        return True, [ref(60)] if 50 in dead else [ref(50), ref(60)]

    arc, _ = arcs({50: None, 60: (40, [70])})
    with trio.fail_after(5):
        result = await iterate(SPACE, 45, ref(40), step, 5.0, arc=arc)
    assert result.owner == ref(60) and result.timeouts == 1


async def test_iterate_does_not_believe_a_lone_claim_from_a_node_it_was_sent_to() -> None:
    """A node that lost every pointer answers as if it were the only one; reached
    through another node, that cannot be true."""

    async def step(hop: NodeRef, key: int, dead: frozenset[int]) -> tuple[bool, list[NodeRef]]:
        if hop.id == 10:
            return False, [ref(30)]
        return True, [hop]

    with pytest.raises(LookupFailed):
        await iterate(SPACE, 45, ref(10), step, 1.0)


# -- on the simulated ring ------------------------------------------------------------------------


def ring_order(cluster: SimCluster):  # type: ignore[no-untyped-def]
    return sorted(cluster.nodes.values(), key=lambda node: node.me.id)


def hide(cluster: SimCluster, hidden_index: int) -> None:
    """Make every node but the hidden one's successor forget it, as if it had just
    joined and told only its successor (whose predecessor it now is)."""
    ring = ring_order(cluster)
    hidden = ring[hidden_index].me
    for node in ring:
        if node.me.id == hidden.id:
            continue
        routing = node.routing
        routing.successors = [s for s in routing.successors if s.id != hidden.id]
        routing.fingers = [None if f is not None and f.id == hidden.id else f for f in routing.fingers]
        routing._candidates = None
        if routing.predecessor is not None and routing.predecessor.id == hidden.id and node is not ring[(hidden_index + 1) % len(ring)]:
            routing.predecessor = None


async def test_a_node_only_its_successor_knows_is_still_named_owner_of_its_keys(
    make_cluster: ClusterFactory, autojump_clock: MockClock
) -> None:
    cluster = make_cluster()
    cluster.add_stable_nodes(16)
    ring = ring_order(cluster)
    hide(cluster, 5)
    hidden = ring[5]
    keys = [hidden.me.id, (ring[4].me.id + 1) % hidden.space.size]
    for asker in (ring[0], ring[9], ring[13]):
        for key in keys:
            with trio.fail_after(30):
                result = await asker.lookup(key)
            assert result.owner.id == hidden.me.id == cluster.owner_id(key), "the lookup named the hidden node's successor"


async def test_a_node_that_lost_its_pointers_does_not_claim_the_ring(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    """Its fingers remain: it forwards instead of answering for every key."""
    cluster = make_cluster()
    cluster.add_stable_nodes(16)
    ring = ring_order(cluster)
    lost = ring[3]
    lost.routing.successors = []
    lost.routing.predecessor = None
    lost.routing._candidates = None
    key = (ring[10].me.id - 1) % lost.space.size
    with trio.fail_after(30):
        result = await lost.lookup(key)
    assert result.owner.id == ring[10].me.id == cluster.owner_id(key)
