"""The simulated network on its own: latency, loss, partitions, crash and restart."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dht.errors import CallTimeout, RemoteError
from dht.simnet import SimEndpoint, SimNetwork


def echo_network(**options: Any) -> tuple[SimNetwork, dict[str, SimEndpoint]]:
    """Endpoints a, b and c, each answering [its name, method, args]."""
    network = SimNetwork(rng=random.Random(3), **options)
    endpoints = {name: network.endpoint(name) for name in ("a", "b", "c")}
    for name, endpoint in endpoints.items():
        endpoint.set_handler(lambda caller, method, args, name=name: [name, method, args])
    return network, endpoints


async def test_call_takes_two_latencies_and_returns_the_result(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network(latency=0.05)
    start = trio.current_time()
    reply = await endpoints["a"].call("b", "hello", [1], timeout=1)
    assert reply == ["b", "hello", [1]]
    assert trio.current_time() - start == pytest.approx(0.10)
    assert network.stats.messages == 2 and network.stats.by_method == {"hello": 2}


async def test_latency_can_depend_on_the_link(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network(latency=lambda source, target: 0.2 if "c" in (source, target) else 0.01)
    start = trio.current_time()
    await endpoints["a"].call("c", "m", [], timeout=5)
    assert trio.current_time() - start == pytest.approx(0.4)


async def test_async_handlers_are_awaited(autojump_clock: MockClock) -> None:
    network = SimNetwork()

    async def slow(caller: object, method: str, args: list[Any]) -> str:
        await trio.sleep(1)
        return "done"

    network.endpoint("x").set_handler(slow)
    caller = network.endpoint("y")
    assert await caller.call("x", "m", [], timeout=5) == "done"


async def test_handler_errors_become_remote_errors(autojump_clock: MockClock) -> None:
    network = SimNetwork()

    def broken(caller: object, method: str, args: list[Any]) -> None:
        raise ValueError("bad arguments")

    network.endpoint("x").set_handler(broken)
    with pytest.raises(RemoteError) as caught:
        await network.endpoint("y").call("x", "m", [], timeout=1)
    assert caught.value.kind == "ValueError" and "bad arguments" in caught.value.message


async def test_crashed_and_unknown_peers_are_silent_until_the_deadline(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network()
    network.crash("b")
    assert not network.is_up("b")
    for target in ("b", "nowhere"):
        start = trio.current_time()
        with pytest.raises(CallTimeout):
            await endpoints["a"].call(target, "m", [], timeout=0.7)
        assert trio.current_time() - start == pytest.approx(0.7)


async def test_a_crashed_address_can_restart_with_a_new_endpoint(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network()
    with pytest.raises(ValueError):
        network.endpoint("b")  # still live
    network.crash("b")
    network.endpoint("b").set_handler(lambda caller, method, args: "reborn")
    assert await endpoints["a"].call("b", "m", [], timeout=1) == "reborn"


async def test_partitions_cut_links_between_groups_until_healed(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network()
    network.partition({"a", "b"}, {"c"})
    a = endpoints["a"]
    assert (await a.call("b", "m", [], timeout=1))[0] == "b"
    with pytest.raises(CallTimeout):
        await a.call("c", "m", [], timeout=1)
    network.heal()
    assert (await a.call("c", "m", [], timeout=1))[0] == "c"


async def test_loss_drops_about_the_configured_share(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network(loss=0.1)
    a = endpoints["a"]
    failures = 0
    for _ in range(1000):
        try:
            await a.call("b", "m", [], timeout=0.1)
        except CallTimeout:
            failures += 1
    # A call needs both its request and its reply: 1 - 0.9² = 19% expected.
    assert 140 <= failures <= 240
    assert network.stats.dropped == failures


async def test_check_wire_round_trips_through_the_codec(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network(check_wire=True)
    reply = await endpoints["a"].call("b", "m", [2**255, (1, 2)], timeout=1)
    assert reply == ["b", "m", [2**255, [1, 2]]]  # tuples arrive as lists, as over TCP
    assert network.stats.bytes > 0
    with pytest.raises(TypeError):
        await endpoints["a"].call("b", "m", [object()], timeout=1)


def test_loss_must_be_a_probability() -> None:
    with pytest.raises(ValueError):
        SimNetwork(loss=1.0)


async def test_jitter_varies_latency_within_its_bounds(autojump_clock: MockClock) -> None:
    network, endpoints = echo_network(latency=0.1, jitter=0.2)
    delays = set()
    for _ in range(50):
        start = trio.current_time()
        await endpoints["a"].call("b", "m", [], timeout=1)
        delays.add(round(trio.current_time() - start, 9))
    assert len(delays) > 40  # distinct arrival times
    assert all(0.16 - 1e-9 <= delay <= 0.24 + 1e-9 for delay in delays)
    with pytest.raises(ValueError):
        SimNetwork(jitter=1.0)
