"""Iterative lookups: find successor(key) by asking nodes one routing step at a time.

Owns the search itself, shared by ring nodes (`ChordNode.lookup`) and clients
outside the ring (`DhtClient`), so a client checks the replica set with a lookup
of its own rather than trusting one node's word. Each step goes to the known
node closest before the key; a hop that fails joins a dead set that every later
step excludes, and a node already asked is asked again once the dead set has
grown. How a step reaches a node (a local table or an RPC) is the caller's `Step`.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio

from .errors import ChordError, LookupFailed, RemoteError, TransportError
from .ids import IdSpace, in_open
from .messages import LookupResult
from .routing import NodeRef

# One routing step at `hop` for `key`, treating `dead` as failed:
# (True, [owner, successors...]) or (False, [nodes to ask next]).
Step = Callable[[NodeRef, int, frozenset[int]], Awaitable[tuple[bool, list[NodeRef]]]]
OnDead = Callable[[NodeRef, ChordError], None]


async def iterate(
    space: IdSpace,
    key: int,
    origin: NodeRef,
    step: Step,
    timeout: float,
    *,
    exclude: frozenset[int] = frozenset(),
    local_address: str | None = None,
    on_dead: OnDead | None = None,
) -> LookupResult:
    """Route from `origin` to the owner of `key` within `timeout` seconds.

    `local_address` is a hop answered from local state, left out of the path;
    `on_dead` hears of every hop that failed. Raises LookupFailed."""
    frontier = {origin.address: origin}
    asked: dict[str, int] = {}
    dead: set[int] = set(exclude)
    path: list[NodeRef] = []
    timeouts = 0
    with trio.move_on_after(timeout):
        while frontier or _ask_again(frontier, [origin, *path], asked, len(dead)):
            hop = min(frontier.values(), key=lambda n: space.distance(n.id, key))
            del frontier[hop.address]
            asked[hop.address] = len(dead)
            try:
                found, nodes = await step(hop, key, frozenset(dead))
            except (TransportError, RemoteError) as exc:
                timeouts += 1
                dead.add(hop.id)
                if on_dead is not None:
                    on_dead(hop, exc)
                continue
            if hop.address != local_address and hop not in path:
                path.append(hop)
            if found:
                return LookupResult(key, nodes[0], nodes, path, timeouts)
            for node in nodes:
                if node.id not in dead and node.address not in asked and in_open(node.id, hop.id, key):
                    frontier[node.address] = node
        raise LookupFailed(f"no live route to key {space.short(key)} ({len(path)} hops, {timeouts} failed)")
    raise LookupFailed(f"lookup of {space.short(key)} timed out after {timeout:g}s ({len(path)} hops)")


def _ask_again(frontier: dict[str, NodeRef], answered: list[NodeRef], asked: dict[str, int], dead_count: int) -> bool:
    """Put back the furthest node that answered before more hops were found dead."""
    for node in reversed(answered):
        if asked.get(node.address, dead_count) < dead_count:
            frontier[node.address] = node
            return True
    return False
