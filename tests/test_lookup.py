"""The pure parts of `dht.lookup`: which owner answers are believed, which nodes of
one are kept, and where a client starts its lookups. An 8-bit circle, no network."""

from __future__ import annotations

from dht.ids import IdSpace
from dht.lookup import ReplicaCache, StartingPoints, in_ring_order, owner_answer_problem
from dht.routing import NodeRef

SPACE = IdSpace(8)


def ref(ident: int) -> NodeRef:
    return NodeRef(ident, f"n{ident}:1")


def test_an_owner_answer_must_put_the_key_between_the_hop_and_the_owner() -> None:
    assert owner_answer_problem(SPACE, 30, ref(10), [ref(50), ref(90)]) is None
    assert owner_answer_problem(SPACE, 50, ref(10), [ref(50)]) is None  # the key may be the owner's own ID
    assert owner_answer_problem(SPACE, 250, ref(200), [ref(5)]) is None  # across zero
    assert "between" in owner_answer_problem(SPACE, 70, ref(10), [ref(50)])  # 70 lies past the named owner
    assert "between" in owner_answer_problem(SPACE, 5, ref(10), [ref(50)])  # 5 lies before the hop
    assert owner_answer_problem(SPACE, 5, ref(10), [ref(10), ref(50)]) is None  # a hop claiming its own arc
    assert "no node" in owner_answer_problem(SPACE, 5, ref(10), [])


def test_only_the_distinct_clockwise_run_of_an_answer_is_kept() -> None:
    assert in_ring_order(SPACE, 30, [ref(50), ref(90), ref(130)]) == [ref(50), ref(90), ref(130)]
    assert in_ring_order(SPACE, 30, [ref(50), ref(50), ref(50)]) == [ref(50)]  # a liar naming itself r times
    assert in_ring_order(SPACE, 30, [ref(50), ref(90), ref(40), ref(130)]) == [ref(50), ref(90)]  # a stale entry
    assert in_ring_order(SPACE, 250, [ref(5), ref(20), ref(240)]) == [ref(5), ref(20), ref(240)]  # wraps to the key


def test_a_client_starts_at_the_known_node_closest_before_the_key() -> None:
    starts = StartingPoints(SPACE, ref(100))
    assert starts.before(30) == ref(100)  # only the entry is known
    starts.learn([ref(20), ref(60), ref(200)])
    assert starts.before(30) == ref(20) and starts.before(60) == ref(60) and starts.before(10) == ref(200)
    starts.forget(ref(20))
    assert starts.before(30) == ref(200)
    starts.forget(ref(100))  # the entry is never forgotten
    assert starts.before(150) == ref(100)


def test_starting_points_are_bounded() -> None:
    starts = StartingPoints(SPACE, ref(0), capacity=3)
    starts.learn([ref(i) for i in range(1, 50)])
    assert starts.before(49) == ref(2)


def test_a_cached_answer_covers_its_arc_until_it_expires_or_is_dropped() -> None:
    from dht.messages import LookupResult

    cache = ReplicaCache(ttl=5.0)
    answer = LookupResult(30, ref(50), [ref(50), ref(90), ref(130)], arc_start=10)  # hop 10 named owner 50
    cache.remember(answer, now=0.0)
    assert cache.replicas(30, now=1.0) == [ref(50), ref(90), ref(130)]
    assert cache.replicas(11, now=1.0) == cache.replicas(50, now=1.0) == answer.successors  # all of (10, 50]
    assert cache.replicas(10, now=1.0) is None and cache.replicas(51, now=1.0) is None  # outside the arc
    assert cache.replicas(30, now=5.5) is None  # stale
    cache.drop(30)
    assert cache.replicas(30, now=1.0) is None
    wrapped = LookupResult(250, ref(5), [ref(5), ref(20)], arc_start=200)  # across zero
    cache.remember(wrapped, now=0.0)
    assert cache.replicas(250, now=1.0) == [ref(5), ref(20)] and cache.replicas(3, now=1.0) == [ref(5), ref(20)]


def test_writes_trust_a_cached_answer_for_a_shorter_age_than_reads() -> None:
    from dht.messages import LookupResult

    cache = ReplicaCache(ttl=5.0)
    cache.remember(LookupResult(30, ref(50), [ref(50), ref(90)], arc_start=10), now=0.0)
    assert cache.replicas(30, now=0.9, max_age=1.0) == [ref(50), ref(90)]
    assert cache.replicas(30, now=1.5, max_age=1.0) is None  # too old to place a put
    assert cache.replicas(30, now=1.5) == [ref(50), ref(90)]  # still fine for a read
