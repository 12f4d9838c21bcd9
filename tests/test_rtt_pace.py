"""Timeouts from measured round trips (`dht.rtt`), the adaptive pace of
maintenance (`dht.pace`), and how a node's calls use them (`dht.peercalls`)."""

from __future__ import annotations

import math

import pytest
import trio
from trio.testing import MockClock

from dht.errors import CallTimeout
from dht.ids import IdSpace
from dht.pace import MEMORY, ROUNDS_PER_CHANGE, ChurnPace
from dht.peercalls import PeerCalls
from dht.routing import NodeRef
from dht.rtt import Estimate, RoundTripTimes
from dht.simnet import SimNetwork

# -- dht.rtt -----------------------------------------------------------------------------


def test_the_first_sample_sets_rfc_6298s_starting_values() -> None:
    estimate = Estimate.first(0.2)
    assert estimate.smoothed == 0.2 and estimate.deviation == 0.1
    assert estimate.timeout == pytest.approx(0.6)  # R + 4 · R/2


def test_later_samples_move_the_estimate_by_its_gains() -> None:
    estimate = Estimate.first(0.2)
    estimate.update(0.1)
    assert estimate.deviation == pytest.approx(0.75 * 0.1 + 0.25 * 0.1)
    assert estimate.smoothed == pytest.approx(0.875 * 0.2 + 0.125 * 0.1)


def test_steady_round_trips_shrink_the_timeout_to_the_floor() -> None:
    times = RoundTripTimes(floor=0.05, ceiling=1.0)
    assert times.timeout("a") == 1.0  # nothing measured yet: the ceiling
    for _ in range(50):
        times.observe("a", 0.02)
    assert times.timeout("a") == 0.05
    assert times.smoothed("a") == pytest.approx(0.02)


def test_a_peer_never_measured_gets_the_figure_over_all_peers() -> None:
    times = RoundTripTimes(floor=0.01, ceiling=2.0)
    for _ in range(20):
        times.observe("near", 0.02)
        times.observe("far", 0.3)
    unknown = times.timeout("new")
    assert times.timeout("near") < unknown <= 2.0
    assert unknown > 0.3  # wide enough for the far peer too


def test_a_slow_peer_is_capped_at_the_ceiling() -> None:
    times = RoundTripTimes(floor=0.01, ceiling=0.5)
    times.observe("slow", 3.0)
    assert times.timeout("slow") == 0.5


def test_bad_samples_are_ignored_and_memory_is_bounded() -> None:
    times = RoundTripTimes(floor=0.01, ceiling=1.0, capacity=2)
    times.observe("a", math.nan)
    times.observe("a", -1.0)
    assert times.smoothed("a") is None
    for peer in ("a", "b", "c"):
        times.observe(peer, 0.1)
    assert times.smoothed("a") is None and times.smoothed("c") == 0.1


def test_floor_and_ceiling_are_checked() -> None:
    with pytest.raises(ValueError):
        RoundTripTimes(floor=0.0, ceiling=1.0)
    with pytest.raises(ValueError):
        RoundTripTimes(floor=2.0, ceiling=1.0)


# -- dht.pace ------------------------------------------------------------------------------


def changes(pace: ChurnPace, every: float, count: int, start: float = 0.0) -> float:
    """Observe `count` neighbour changes `every` seconds apart; return the last time."""
    pace.observe(("s0", "p0"), start)
    now = start
    for n in range(1, count + 1):
        now = start + n * every
        pace.observe((f"s{n}", "p0"), now)
    return now


def test_a_new_node_starts_fast_and_a_quiet_one_slows_to_the_configured_interval() -> None:
    pace = ChurnPace(interval=30.0, floor=1.0)
    assert pace.mean_gap(0.0) is None and pace.scale(0.0) == 1.0  # nothing observed: the configured pace
    pace.observe(("s", "p"), 100.0)
    assert pace.scale(100.0) * 30.0 == 1.0  # no evidence of quiet yet: the floor
    assert pace.scale(150.0) * 30.0 == pytest.approx(5.0)  # 50 quiet seconds
    for t in range(100, 700, 30):
        pace.observe(("s", "p"), float(t))
    assert pace.scale(700.0) == 1.0


def test_churn_shortens_the_interval_to_rounds_per_change() -> None:
    pace = ChurnPace(interval=30.0, floor=1.0)
    now = changes(pace, every=20.0, count=6)
    assert pace.mean_gap(now) == pytest.approx(20.0)
    assert pace.scale(now) * 30.0 == pytest.approx(20.0 / ROUNDS_PER_CHANGE)


def test_fast_churn_stops_at_the_floor_and_quiet_brings_the_ceiling_back() -> None:
    pace = ChurnPace(interval=30.0, floor=1.0)
    now = changes(pace, every=0.5, count=MEMORY + 4)
    assert pace.scale(now) * 30.0 == pytest.approx(1.0)
    later = now + MEMORY * 30.0 * ROUNDS_PER_CHANGE
    assert pace.scale(later) == 1.0


def test_fixed_intervals_when_the_floor_is_the_interval() -> None:
    pace = ChurnPace(interval=3.0, floor=3.0)
    now = changes(pace, every=1.0, count=5)
    assert not pace.adaptive and pace.scale(now) == 1.0
    with pytest.raises(ValueError):
        ChurnPace(interval=3.0, floor=4.0)


# -- dht.peercalls -------------------------------------------------------------------------

SPACE = IdSpace(16)


def peer_calls(network: SimNetwork, address: str) -> PeerCalls:
    return PeerCalls(network.endpoint(address), SPACE, rpc_timeout=1.0, min_rpc_timeout=0.05, attempts=2)


async def test_a_dead_peer_costs_its_measured_timeout_not_the_fixed_one(autojump_clock: MockClock) -> None:
    """Once a peer has answered in 20 ms, a call to it after it died gives up after
    the floor, doubled on the retry: 0.05 + 0.1 s, not 2 × 1 s."""
    network = SimNetwork(latency=0.01)
    target = network.endpoint("b")
    target.set_handler(lambda caller, method, args: ["b", 7])
    calls = peer_calls(network, "a")
    peer = NodeRef(7, "b")
    for _ in range(10):
        await calls.call(peer, "ping")
    assert calls.round_trips.smoothed("b") == pytest.approx(0.02)
    network.crash("b")
    started = trio.current_time()
    with pytest.raises(CallTimeout):
        await calls.call(peer, "ping")
    assert trio.current_time() - started == pytest.approx(0.15)
    started = trio.current_time()
    with pytest.raises(CallTimeout):
        await calls.call(peer, "ping", attempts=1)  # a lookup's step: one try, then around
    assert trio.current_time() - started == pytest.approx(0.05)


async def test_block_calls_wait_the_fixed_timeout_and_teach_nothing(autojump_clock: MockClock) -> None:
    """Moving a block takes as long as its bytes take: no round-trip deadline."""
    network = SimNetwork(latency=0.3)
    target = network.endpoint("b")
    target.set_handler(lambda caller, method, args: True)
    calls = peer_calls(network, "a")
    assert await calls.call(NodeRef(7, "b"), "put_block", b"k" * 32, b"data") is True
    assert calls.round_trips.smoothed("b") is None
