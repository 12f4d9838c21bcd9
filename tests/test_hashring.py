"""Unit tests for edge.hashring: ownership, balance, minimal movement, failover order,
bounded loads and the error cases. Pure logic, no I/O; every run is deterministic."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest

from edge.hashring import DEFAULT_VNODES, HashRing, HashRingError, load_cap, point_of

EDGES = ["edge-0", "edge-1", "edge-2", "edge-3"]
KEYS = [f"/obj/{i}?v={i % 7}" for i in range(30_000)]

# Share of 30,000 keys each of 3 edges must own. With 128 vnodes the measured shares
# are 30.3% / 30.9% / 38.8% (one standard deviation is about 2.4 points); with the
# vnode count ignored (one point per edge) they are 6.8% / 16.7% / 76.5%.
MIN_SHARE, MAX_SHARE = 0.20, 0.47


def owners(ring: HashRing, keys: list[str] = KEYS) -> dict[str, str]:
    return {key: ring.owner(key) for key in keys}


def shares(ring: HashRing) -> dict[str, float]:
    counts = Counter(owners(ring).values())
    return {name: counts[name] / len(KEYS) for name in ring.names}


# -- ownership ------------------------------------------------------------------------


def test_default_vnodes_meets_the_spec() -> None:
    assert DEFAULT_VNODES >= 100
    assert HashRing(EDGES).vnodes == DEFAULT_VNODES


def test_owner_is_deterministic_and_independent_of_build_order() -> None:
    forward = HashRing(EDGES)
    backward = HashRing(reversed(EDGES))
    incremental = HashRing()
    for name in [EDGES[2], EDGES[0], EDGES[3], EDGES[1]]:
        incremental.add(name)
    expected = owners(forward)
    assert owners(forward) == expected
    assert owners(backward) == expected
    assert owners(incremental) == expected


def test_single_edge_owns_everything() -> None:
    ring = HashRing(["only"])
    assert set(owners(ring, KEYS[:500]).values()) == {"only"}
    assert ring.preference("/x") == ["only"]


@pytest.mark.parametrize(
    "names",
    [EDGES[:3], ["a", "b", "c"], ["edge-a.example:8080", "edge-b.example:8080", "edge-c.example:8080"]],
)
def test_three_edges_share_keys_within_bounds(names: list[str]) -> None:
    for name, share in shares(HashRing(names)).items():
        assert MIN_SHARE <= share <= MAX_SHARE, (name, share)


def test_balance_bound_catches_a_ring_with_one_point_per_edge() -> None:
    # Guards the bound itself: were the vnode count ignored, the test above would fail.
    lopsided = shares(HashRing(EDGES[:3], vnodes=1)).values()
    assert not all(MIN_SHARE <= share <= MAX_SHARE for share in lopsided)


# -- minimal movement ---------------------------------------------------------------


def test_removing_an_edge_moves_only_its_own_keys() -> None:
    ring = HashRing(EDGES)
    before = owners(ring)
    ring.remove("edge-2")
    after = owners(ring)
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == "edge-2"}
    assert "edge-2" not in after.values()


def test_adding_an_edge_moves_about_a_quarter_of_keys_all_to_it() -> None:
    ring = HashRing(EDGES[:3])
    before = owners(ring)
    ring.add("edge-3")
    after = owners(ring)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert {after[key] for key in moved} == {"edge-3"}
    assert 0.15 <= len(moved) / len(KEYS) <= 0.35, len(moved) / len(KEYS)


# -- preference order -----------------------------------------------------------------


def test_preference_lists_every_edge_once_starting_with_owner() -> None:
    ring = HashRing(EDGES)
    for key in KEYS[:2_000]:
        order = ring.preference(key)
        assert order[0] == ring.owner(key)
        assert sorted(order) == sorted(EDGES)


def test_preference_falls_over_to_the_next_owner() -> None:
    # When the owner is removed, its keys go to the second name in its preference.
    ring = HashRing(EDGES)
    orders = {key: ring.preference(key) for key in KEYS[:2_000]}
    ring.remove("edge-1")
    for key, order in orders.items():
        assert ring.preference(key) == [name for name in order if name != "edge-1"]


def test_keys_past_the_highest_point_wrap_to_the_lowest() -> None:
    ring = HashRing(EDGES, vnodes=2)
    points = {point_of(f"{name}#{i}"): name for name in EDGES for i in range(2)}
    top_keys = [key for key in KEYS[:5_000] if point_of(key) > max(points)]
    assert top_keys
    for key in top_keys:
        assert ring.owner(key) == points[min(points)]
        assert sorted(ring.preference(key)) == sorted(EDGES)


# -- bounded loads ------------------------------------------------------------------


def test_load_cap_formula() -> None:
    assert load_cap(0, 3, 0.25) == 1
    assert load_cap(11, 3, 0.25) == 5  # ceil(1.25 * 12 / 3) = 5
    assert load_cap(9, 11, 0.1) == 1  # exactly 1.0: no float rounding up to 2
    assert load_cap(99, 4, 0.0) == 25


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.25, 1.0])
def test_bounded_loads_never_exceed_the_cap(epsilon: float) -> None:
    ring = HashRing(EDGES)
    loads = dict.fromkeys(EDGES, 0)
    diverted = 0
    for key in KEYS[:10_000]:
        cap = math.ceil((1 + Fraction(str(epsilon))) * (sum(loads.values()) + 1) / len(EDGES))
        chosen = ring.owner_bounded(key, loads, epsilon)
        diverted += chosen != ring.owner(key)
        loads[chosen] += 1
        assert loads[chosen] <= cap, (key, chosen, loads, cap)
    assert sum(loads.values()) == 10_000
    assert diverted > 0  # the cap really bit; plain ownership would have exceeded it


def test_bounded_owner_is_plain_owner_when_loads_are_even() -> None:
    ring = HashRing(EDGES)
    for key in KEYS[:500]:
        assert ring.owner_bounded(key, {}) == ring.owner(key)


def test_bounded_owner_skips_a_full_owner() -> None:
    ring = HashRing(EDGES)
    key = KEYS[0]
    first, second = ring.preference(key)[:2]
    assert ring.owner_bounded(key, {first: 100, "not-on-ring": 10**6}) == second


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("vnodes", [0, -1, True, 1.5])
def test_bad_vnode_count_raises(vnodes: object) -> None:
    with pytest.raises(HashRingError, match="vnodes"):
        HashRing(EDGES, vnodes=vnodes)  # type: ignore[arg-type]


def test_duplicate_names_raise() -> None:
    with pytest.raises(HashRingError, match="already on the ring"):
        HashRing(["a", "b", "a"])
    ring = HashRing(["a"])
    with pytest.raises(HashRingError, match="already on the ring"):
        ring.add("a")


@pytest.mark.parametrize("name", ["", None, 7])
def test_empty_or_non_string_names_raise(name: object) -> None:
    with pytest.raises(HashRingError, match="non-empty string"):
        HashRing([name])  # type: ignore[list-item]
    with pytest.raises(HashRingError, match="non-empty string"):
        HashRing().add(name)  # type: ignore[arg-type]


def test_unknown_removal_raises_and_leaves_ring_intact() -> None:
    ring = HashRing(EDGES)
    with pytest.raises(HashRingError, match="not on the ring"):
        ring.remove("edge-9")
    assert ring.names == tuple(EDGES)


def test_empty_ring_lookups_raise() -> None:
    ring = HashRing(["a"])
    ring.remove("a")
    for lookup in (ring.owner, ring.preference, lambda key: ring.owner_bounded(key, {})):
        with pytest.raises(HashRingError, match="no edges"):
            lookup("/x")


@pytest.mark.parametrize("epsilon", [-0.1, math.inf, math.nan])
def test_bad_epsilon_raises(epsilon: float) -> None:
    with pytest.raises(HashRingError, match="epsilon"):
        HashRing(EDGES).owner_bounded("/x", {}, epsilon)


def test_negative_load_raises() -> None:
    with pytest.raises(HashRingError, match="negative"):
        HashRing(EDGES).owner_bounded("/x", {"edge-0": -1})


def test_errors_are_value_errors() -> None:
    assert issubclass(HashRingError, ValueError)


def test_names_len_and_contains() -> None:
    ring = HashRing(["b", "a"])
    assert ring.names == ("a", "b")
    assert len(ring) == 2
    assert "a" in ring and "z" not in ring
