"""Shared fixtures: a simulated cluster of real Chord nodes in virtual time, and a
trio scheduler seeded per test, so that a test's outcome does not depend on which
tests ran before it (CHORDCDN_SCHEDULER_SEED varies the seed to hunt for races)."""

from __future__ import annotations

import os
import random
from typing import Callable, Iterator

import pytest
import trio
import trio.testing

from dht.node import NodeConfig
from dht.simcluster import SimCluster
from dht.simnet import SimNetwork
from dht.storage import StorageConfig

from .edgecase import EdgeUnderTest, assert_alive, edge_process

# Fast maintenance so protocol tests need little virtual time; latency 10 ms one way.
FAST = NodeConfig(
    stabilize_interval=1.0,
    fix_fingers_interval=0.5,
    check_predecessor_interval=1.0,
    rpc_timeout=0.5,
    lookup_timeout=10.0,
)

ClusterFactory = Callable[..., SimCluster]


@pytest.fixture(autouse=True)
def seeded_trio_scheduler(request: pytest.FixtureRequest) -> None:
    """trio shuffles runnable tasks with one module-level Random; seed it per test."""
    scheduler_random = getattr(trio._core._run, "_r", None)
    if isinstance(scheduler_random, random.Random):
        scheduler_random.seed(os.environ.get("CHORDCDN_SCHEDULER_SEED", "") + request.node.nodeid)


@pytest.fixture
def make_cluster(nursery: trio.Nursery) -> ClusterFactory:
    """Build a SimCluster on a fresh SimNetwork; extra options go to SimNetwork.

    pytest-trio only runs a test on a MockClock that the test function itself
    takes as an argument, so tests using this must also take `autojump_clock`."""

    def build(
        config: NodeConfig = FAST, seed: int = 1, storage: StorageConfig | None = None, vnodes: int = 1, **network_options: object
    ) -> SimCluster:
        if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            raise RuntimeError("simulated-network tests must take the autojump_clock fixture as an argument")
        network = SimNetwork(rng=random.Random(seed + 1), **network_options)  # type: ignore[arg-type]
        return SimCluster(nursery, network, config, random.Random(seed), storage, vnodes)

    return build


# -- end-to-end cache tests (test_cache_e2e*.py, test_cache_suite_mirror.py) ------------------


@pytest.fixture(scope="module")
def edge_stack() -> Iterator[EdgeUnderTest]:
    """One scripted origin and one `chordcdn edge` process per test module that uses it."""
    with edge_process() as stack:
        yield stack


@pytest.fixture
def edge(edge_stack: EdgeUnderTest) -> Iterator[EdgeUnderTest]:
    """The module's edge, checked to be running before and after the test."""
    assert_alive(edge_stack, "before this test")
    yield edge_stack
    assert_alive(edge_stack, "during this test")
