"""Virtual nodes: one process holding several positions on the ring.

Owns the positions a process takes and how they share its resources. Position 0
is the process's own node at its plain address, with the ID its certificate (or
address) gives; position i answers at "address/i" with the ID
`IdSpace.vnode_id(first ID, i)`, so a certificate binds every position and no
process picks where any of them sit. The positions share:

- the socket and the links to peers (`VirtualEndpoint`: calls leave through the
  process's transport, incoming calls name the position they are for);
- finger maintenance: one fix_fingers timer takes the positions in turn, so a
  process's finger lookups do not grow with their number (`dht.maintenance`);
- one block store (`dht.storage.BlockService` over all positions), with copies of
  a block kept on distinct processes (`routing.distinct_hosts`).

Each position runs its own stabilize and predecessor checks: those keep the ring
itself right and cannot be shared. The simulated network gives each position an
endpoint of its own instead (`dht.simcluster`).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Protocol

import trio

from .addresses import MAX_VNODES, vnode_address
from .errors import LookupFailed
from .node import ChordNode, NodeConfig
from .transport import Handler, Transport

JOIN_ROUNDS = 5  # tries of one position's join, a stabilize interval apart


class VirtualHost(Protocol):
    """What a virtual endpoint needs of its process's transport."""

    @property
    def address(self) -> str: ...

    @property
    def local_node_id(self) -> int | None: ...

    def set_handler(self, handler: Handler, vnode: int = 0) -> None: ...

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float, node_id: int | None = None) -> Any: ...


class VirtualEndpoint:
    """Position `index` of a process: a `Transport` over the process's own."""

    def __init__(self, host: VirtualHost, index: int, node_id: int | None) -> None:
        if not 0 < index < MAX_VNODES:
            raise ValueError(f"a virtual node index is 1..{MAX_VNODES - 1}, not {index}")
        self.host, self.index, self._node_id = host, index, node_id

    @property
    def address(self) -> str:
        return vnode_address(self.host.address, self.index)

    @property
    def local_node_id(self) -> int | None:
        return self._node_id

    def set_handler(self, handler: Handler) -> None:
        self.host.set_handler(handler, self.index)

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float, node_id: int | None = None) -> Any:
        return await self.host.call(address, method, args, timeout=timeout, node_id=node_id)


EndpointFactory = Callable[[int, int], Transport]  # (index, the position's ID) -> the position's endpoint


def open_positions(first: ChordNode, count: int, endpoint_for: EndpointFactory, rng: random.Random) -> list[ChordNode]:
    """A process's `count` ring positions, `first` first, the others on the
    endpoints `endpoint_for` gives (not yet joined)."""
    if not 1 <= count <= MAX_VNODES:
        raise ValueError(f"a process holds 1..{MAX_VNODES} ring positions, not {count}")
    positions = [first]
    for index in range(1, count):
        ident = first.space.vnode_id(first.me.id, index)
        positions.append(ChordNode(endpoint_for(index, ident), first.config, ident, random.Random(rng.random()), lender=first))
    return positions


def positions_on(host: VirtualHost, config: NodeConfig, count: int, node_id: int | None = None) -> list[ChordNode]:
    """The positions of a process on one transport (TCP): the first at its
    address, the others behind `VirtualEndpoint`s."""
    first = ChordNode(host, config, node_id)  # type: ignore[arg-type]
    bound = host.local_node_id is not None
    return open_positions(first, count, lambda index, ident: VirtualEndpoint(host, index, ident if bound else None), first.rng)


async def join_all(positions: list[ChordNode], bootstrap: str | None) -> None:
    """Join every position. A process that founds the ring (no `bootstrap`) links
    its own positions into a ring directly: there is nobody else to ask. Otherwise
    the first joins through `bootstrap`, then the others in ring order, each
    through the position of ours just before it, whose successors already lie
    around its place (a walk from afar through a ring still filling its fingers
    can run past a lookup's hop limit)."""
    first = positions[0]
    await first.join(bootstrap)
    if bootstrap is None or bootstrap == first.me.address:
        link_alone(positions)
        return
    space = first.space
    previous = first
    for position in sorted(positions[1:], key=lambda node: space.distance(first.me.id, node.me.id)):
        await _join_patiently(position, previous.me.address)
        previous = position


async def _join_patiently(position: ChordNode, via: str) -> None:
    """A position's join, tried again a few stabilize rounds later if its lookup
    gives up: a burst of joins (a process adding dozens of positions while others
    do too) leaves pointers stale for a while."""
    for attempt in range(JOIN_ROUNDS):
        try:
            await position.join(via)
            return
        except LookupFailed:
            if attempt == JOIN_ROUNDS - 1:
                raise
            await trio.sleep(position.config.stabilize_interval)


def link_alone(positions: list[ChordNode]) -> None:
    """Make a lone process's positions a ring: each one's successor the next by
    ID and its predecessor the one before (one process: no longer lists)."""
    ordered = sorted(positions, key=lambda node: node.me.id)
    if len(ordered) < 2:
        return
    for index, position in enumerate(ordered):
        position.routing.set_successors(ordered[(index + 1) % len(ordered)].me, [])
        position.routing.set_predecessor(ordered[index - 1].me)
