"""Joining the ring: finding a node's place, taking its successor, and waiting
until that successor adopts it.

Owns a `ChordNode`'s join (the paper's join plus the announcements of design note
2): look up our own ID from the bootstrap node with the owner confirmed, notify the
successor found, walk back to any closer node that joined meanwhile, tell the
predecessor we follow it, and return only once the successor names us as its
predecessor, since until then lookups of our keys end at it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from . import messages
from .errors import ChordError, LookupFailed, RemoteError, TransportError
from .ids import in_open
from .messages import LookupResult
from .routing import NodeRef

if TYPE_CHECKING:
    from .node import ChordNode

log = logging.getLogger(__name__)

JOIN_ATTEMPTS = 3


async def join_ring(joiner: ChordNode, bootstrap: str | None) -> None:
    """Join the ring through any node at `bootstrap`, or start a new ring when None."""
    if bootstrap is None or bootstrap == joiner.me.address:
        log.info("%r starts a new ring", joiner)
        return
    with messages.purpose("maintenance"):
        await _join_via(joiner, bootstrap)


async def _join_via(joiner: ChordNode, bootstrap: str) -> None:
    result = await _find_place_via(joiner, bootstrap)
    successor = result.owner
    if successor.id == joiner.me.id:
        raise ChordError(f"node ID {joiner.space.short(joiner.me.id)} is already in the ring at {successor.address}")
    try:
        previous, its_successors = await joiner.notify_peer(successor)
    except TransportError:  # stabilize will fill in the successor list
        previous, its_successors = None, []
    adopted = joiner.routing.successors[0] if joiner.routing.successors else None
    if adopted is None or not in_open(adopted.id, joiner.me.id, successor.id):
        joiner.routing.set_successors(successor, its_successors)
    # else a node that joined just before us, between us and the successor,
    # told us to follow it while we waited: keep it, or the ring skips it
    await joiner.maintenance.walk_back(previous)
    await _announce_to(joiner, previous)
    await _until_adopted(joiner)
    for node in (*result.path, *its_successors):
        joiner.routing.learn(node)
    log.info("%r joined via %s; successor %s", joiner, bootstrap, successor.address)


async def _until_adopted(joiner: ChordNode) -> None:
    """Return once our successor names us as its predecessor, since until then
    lookups of our keys end at it. A notify from behind a dead predecessor is
    answered only after the successor has checked that one, which can take
    longer than we wait for the reply; so look, and notify again, a few
    times. A successor that does not answer is left to stabilize."""
    for _ in range(JOIN_ATTEMPTS):
        successor = joiner.routing.successor
        if successor.id == joiner.me.id:
            return
        try:
            predecessor, _ = await joiner.arc_of(successor)
            if predecessor is not None and predecessor.id == joiner.me.id:
                return
            if predecessor is not None and in_open(predecessor.id, joiner.me.id, successor.id):
                await joiner.maintenance.walk_back(predecessor)  # a closer node joined: follow it instead
                continue
            await joiner.notify_peer(successor)
        except (TransportError, RemoteError):
            return


async def _find_place_via(joiner: ChordNode, bootstrap: str) -> LookupResult:
    """Look up our own ID starting at the bootstrap node, retrying lost messages."""
    failure: ChordError = LookupFailed(f"cannot join via {bootstrap}")
    for attempt in range(JOIN_ATTEMPTS):
        if attempt:  # give the ring a stabilize round to drop stale pointers
            await trio.sleep(joiner.config.stabilize_interval)
        try:
            entry = await joiner.peers.ping_address(bootstrap)
            return await joiner.search(joiner.me.id, entry, joiner.config.lookup_timeout, confirm=True)
        except (TransportError, LookupFailed) as exc:
            failure = exc
    raise failure


async def _announce_to(joiner: ChordNode, predecessor: NodeRef | None) -> None:
    """Tell the node before us that we now follow it, so it need not wait for its
    next stabilize; it checks the claim against its own view first."""
    if predecessor is None or not in_open(joiner.me.id, predecessor.id, joiner.routing.successor.id):
        return
    try:
        adopted = await joiner.ask(predecessor, "consider_successor", messages.adopted_reply, joiner.me.to_wire())
    except (TransportError, RemoteError):
        return
    if adopted is True and joiner.routing.predecessor is None:
        joiner.routing.set_predecessor(predecessor)
