"""An in-memory network for running real nodes in virtual time.

Owns simulated links: per-link latency, random loss, partitions between groups of
addresses (by machine: a virtual node's endpoint `host/i` sits with `host`), and crash and restart of endpoints, and who each endpoint is (a `PeerIdentity`, so
role checks and ID binding run in simulation too). Everything waits through trio, so
under `trio.testing.MockClock(autojump_threshold=0)` virtual hours pass in wall
seconds. A call costs two sleeps (request and reply) and runs the target's handler
in the caller's task, which keeps the per-message cost low enough for thousands of
nodes. Lost messages and crashed or partitioned peers look like silence: the caller
waits out its deadline, as it would for a dead machine on a real network.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from .addresses import host_of
from .errors import CallTimeout, IdentityMismatch, RemoteError
from .identity import UNAUTHENTICATED, PeerIdentity
from .messages import traffic_kind
from .transport import Handler, remote_error_of
from .wire import pack, unpack

LatencyModel = Callable[[str, str], float]


@dataclass
class NetworkStats:
    """Message counters: one call is a request plus, when delivered, a reply."""

    messages: int = 0
    bytes: int = 0  # as the TCP codec would frame them
    dropped: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    bytes_by_kind: dict[str, int] = field(default_factory=dict)  # messages.TRAFFIC_KIND


class SimNetwork:
    """A simulated network of named endpoints.

    latency: seconds one way, either a constant or a function of (source, target).
    jitter: each message's latency varies by up to this fraction either way, drawn
        from `rng`. Besides realism this keeps arrival times distinct: trio orders
        timers that fall due at the same instant by object identity, which would
        make runs with the same seed differ.
    loss: probability that any one message is dropped.
    check_wire: also decode every message the TCP codec encoded, and deliver that;
        this proves node messages are wire-safe at the cost of speed. Every message
        is encoded either way, to count its bytes by kind (`NetworkStats`).
    """

    def __init__(
        self,
        latency: float | LatencyModel = 0.01,
        loss: float = 0.0,
        jitter: float = 0.0,
        rng: random.Random | None = None,
        check_wire: bool = False,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.jitter = jitter
        self._latency = latency
        self.loss = loss
        self.rng = rng or random.Random(0)
        self.check_wire = check_wire
        self.stats = NetworkStats()
        self._endpoints: dict[str, SimEndpoint] = {}
        self._group_of: dict[str, int] = {}

    # -- topology ---------------------------------------------------------------

    def endpoint(self, address: str, identity: PeerIdentity = UNAUTHENTICATED) -> "SimEndpoint":
        """A new live endpoint at address, replacing any crashed one there. With an
        authenticated identity, callers see its role and name, and a call naming
        another node ID at this address fails as a TLS peer's would."""
        existing = self._endpoints.get(address)
        if existing is not None and existing.up:
            raise ValueError(f"address {address} is already in use")
        endpoint = SimEndpoint(self, address, identity)
        self._endpoints[address] = endpoint
        return endpoint

    def crash(self, address: str) -> None:
        """The endpoint stops answering; calls to it time out."""
        endpoint = self._endpoints.get(address)
        if endpoint is not None:
            endpoint.up = False

    def is_up(self, address: str) -> bool:
        endpoint = self._endpoints.get(address)
        return endpoint is not None and endpoint.up

    def partition(self, *groups: set[str] | list[str]) -> None:
        """Split the network: addresses in different groups cannot reach each other.
        Addresses not named form one more group together. A virtual node goes with
        its process's plain address."""
        self._group_of = {address: index + 1 for index, group in enumerate(groups) for address in group}

    def heal(self) -> None:
        """Remove every partition."""
        self._group_of = {}

    def latency(self, source: str, target: str) -> float:
        """One way, between the machines the addresses are on (a process's virtual
        nodes share its place)."""
        base = self._latency(host_of(source), host_of(target)) if callable(self._latency) else self._latency
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)
        return base

    # -- delivery ---------------------------------------------------------------

    def _delivers(self, source: str, target: str) -> bool:
        if self._group_of and self._group_of.get(host_of(source), 0) != self._group_of.get(host_of(target), 0):
            return False
        if self.loss and self.rng.random() < self.loss:
            self.stats.dropped += 1
            return False
        return True

    def _count(self, method: str, payload: Any) -> Any:
        stats = self.stats
        stats.messages += 1
        stats.by_method[method] = stats.by_method.get(method, 0) + 1
        data = pack(payload)
        size = len(data) + 4  # the length prefix
        stats.bytes += size
        kind = traffic_kind(method)
        stats.bytes_by_kind[kind] = stats.bytes_by_kind.get(kind, 0) + size
        return unpack(data) if self.check_wire else payload

    async def _one_way(self, source: str, target: str, method: str, payload: Any) -> Any:
        payload = self._count(method, payload)
        await trio.sleep(self.latency(source, target))
        if not self._delivers(source, target):
            await trio.sleep_forever()
        return payload

    async def deliver(self, source: SimEndpoint, target: str, method: str, args: list[Any], node_id: int | None = None) -> Any:
        args = await self._one_way(source.address, target, method, args)
        endpoint = self._endpoints.get(target)
        if endpoint is None or not endpoint.up or endpoint.handler is None:
            await trio.sleep_forever()
        bound = endpoint.identity
        if node_id is not None and bound.authenticated and bound.node_id != node_id:
            raise IdentityMismatch(f"{target} is {bound}, not the node with the ID asked for")
        try:
            result = endpoint.handler(source.identity, method, args)
            if inspect.isawaitable(result):
                result = await result
            ok = True
        except Exception as exc:  # the handler's error becomes the caller's RemoteError
            result, ok = remote_error_of(exc), False
        if not endpoint.up:  # crashed while handling: the reply never leaves
            await trio.sleep_forever()
        result = await self._one_way(target, source.address, method, result)
        if not ok:
            raise RemoteError(*result)
        return result


class SimEndpoint:
    """One node's attachment to a SimNetwork; implements the Transport protocol."""

    def __init__(self, network: SimNetwork, address: str, identity: PeerIdentity = UNAUTHENTICATED) -> None:
        self.network = network
        self._address = address
        self.identity = identity
        self.handler: Handler | None = None
        self.up = True

    @property
    def address(self) -> str:
        return self._address

    @property
    def local_node_id(self) -> int | None:
        return self.identity.node_id if self.identity.authenticated else None

    def set_handler(self, handler: Handler) -> None:
        self.handler = handler

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float, node_id: int | None = None) -> Any:
        with trio.move_on_after(timeout):
            return await self.network.deliver(self, address, method, args, node_id)
        raise CallTimeout(f"{method} to {address} timed out after {timeout:g}s")
