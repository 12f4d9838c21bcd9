"""Recursive lookups: the query goes from hop to hop, and the owner answers the asker itself.

Owns the `forward` and `found` calls and a node's wait for its own answers. An
iterative lookup (`dht.lookup`) costs the asker a round trip to every hop, to
nodes anywhere on Earth. Here each hop passes the query on to its best next
hop, which with proximity fingers (`Maintenance.fix_fingers`) is a near one,
and the query costs one way per hop; a hop whose successor list reaches past
the key sends it straight to the owner. The node whose own predecessor pointer
covers the key answers the asker directly: the owner confirms itself, as
`dht.lookup.confirm_owner` has it do, at no extra cost.

Nothing loops: a hop passes the query only to nodes strictly between itself and
the key, so each hop is closer. A query sent to a node as the owner that is
not (a node joined in between, or the sender's successor list is behind) walks
back through predecessors, each closer to the key, as `confirm_owner` does. A
query past its hop limit, at a node already on its path, or at a node that can
neither answer nor pass it on, is answered "not found", and the asker falls
back to an iterative lookup at once rather than at its timeout. A next hop that
does not acknowledge is dropped from routing and the next candidate tried.

Answers are checked as iterative ones are: `found` must come from the owner it
names (on authenticated links) and the key must lie in the arc it claims, and
it must match a query this node is waiting on. A node relays at most
MAX_RELAYING queries at once and refuses more, so a flood of `forward` calls
costs it a counter, not a task each.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from . import messages
from .errors import LookupFailed, RemoteError, TransportError
from .identity import PeerIdentity
from .ids import in_half_open
from .lookup import hop_limit, in_ring_order
from .messages import Found, LookupResult, Query
from .routing import NodeRef, Owner

if TYPE_CHECKING:
    from .node import ChordNode

log = logging.getLogger(__name__)

MAX_RELAYING = 256  # queries one node passes on at once
NEXT_HOP_TRIES = 3  # candidates tried before a hop gives up on a query


@dataclass
class _Waiting:
    key: int
    done: trio.Event = field(default_factory=trio.Event)
    result: LookupResult | None = None
    reason: str = "no answer"


class RecursiveLookups:
    """One node's recursive lookups: those it asks and those it relays."""

    def __init__(self, node: "ChordNode") -> None:
        self.node = node
        self._waiting: dict[int, _Waiting] = {}
        self.relaying = 0
        node.register("forward", self._on_forward)
        node.register("found", self._on_found)

    async def lookup(self, key: int, timeout: float) -> LookupResult:
        """The owner of `key`, as the owner itself reports it; LookupFailed when
        no answer comes within `timeout` or a hop gives up on the query."""
        node = self.node
        nonce = secrets.randbits(64)  # unguessable: an answer must match a query
        waiting = self._waiting[nonce] = _Waiting(key)
        hops = min(hop_limit(node.routing.estimated_size()), messages.MAX_HOPS)
        try:
            with trio.move_on_after(timeout):
                await self._route_on(Query(key, node.me, nonce, hops))
                await waiting.done.wait()
        finally:
            del self._waiting[nonce]
        if waiting.result is None:
            raise LookupFailed(f"recursive lookup of {node.space.short(key)}: {waiting.reason}")
        return waiting.result

    # -- relaying --------------------------------------------------------------------

    def _on_forward(self, caller: PeerIdentity, args: list[Any]) -> bool:
        """Take a query to pass on: True once it is ours to carry, False when this
        node is too busy or not running (the sender then tries another)."""
        query = Query.from_wire(args, self.node.space)
        if self.relaying >= MAX_RELAYING:
            return False
        self.relaying += 1
        if not self.node.maintenance.start_soon(self._relay, query):
            self.relaying -= 1
            return False
        return True

    async def _relay(self, query: Query) -> None:
        """Pass a query on. Its traffic counts as the asker's lookup does (a lookup
        for repair counts as data), where the transport carries that purpose."""
        try:
            await self._route_on(query)
        finally:
            self.relaying -= 1

    async def _route_on(self, query: Query) -> None:
        """Answer the query if we own its key; otherwise pass it on."""
        node = self.node
        me = node.me
        answer = node.routing.route(query.key, None)
        if isinstance(answer, Owner) and answer.nodes[0].id == me.id:
            await self._answer(query, answer.nodes, node.routing.arc_start())
            return
        if query.hops_left <= 0 or any(hop.id == me.id for hop in query.path):
            await self._answer(query, [], None)
            return
        path = query.path if me.id == query.asker.id else (*query.path, me)
        onward = replace(query, hops_left=query.hops_left - 1, path=path)
        if query.final:  # sent to us as the owner, but our predecessor lies at or after the key
            await self._walk_back(onward)
            return
        owner = next((after for after in node.routing.successors if in_half_open(query.key, me.id, after.id)), None)
        if owner is not None and await self._pass_to(owner, replace(onward, final=True)):
            return
        for hop in answer.nodes[:NEXT_HOP_TRIES]:
            if hop != owner and await self._pass_to(hop, onward):
                return
        await self._answer(query, [], None)

    async def _walk_back(self, query: Query) -> None:
        """A node joined between the key and us: pass the query to our predecessor,
        still as to the owner, as `confirm_owner` walks back. Each step is closer
        to the key; a node that knows no predecessor gives up."""
        predecessor = self.node.routing.predecessor
        if predecessor is None or not await self._pass_to(predecessor, query):
            await self._answer(query, [], None)

    async def _pass_to(self, hop: NodeRef, query: Query) -> bool:
        try:
            taken = await self.node.peers.call(hop, "forward", *query.to_wire(), attempts=1)
        except TransportError as exc:
            self.node.drop_unreachable(hop)
            log.debug("%r: forward to %s failed: %s", self.node, hop.address, exc)
            return False
        except RemoteError as exc:
            log.debug("%r: %s refused a query: %s", self.node, hop.address, exc)
            return False
        return taken is True

    async def _answer(self, query: Query, nodes: list[NodeRef], arc_start: NodeRef | None) -> None:
        """Tell the asker: the owner (us) and its successors, or, with no nodes, that
        this query ends here unanswered."""
        found = Found(query.nonce, query.key, nodes, arc_start, list(query.path))
        if query.asker.id == self.node.me.id:
            self._settle(found)
            return
        try:
            await self.node.peers.call(query.asker, "found", *found.to_wire(), attempts=1)
        except (TransportError, RemoteError) as exc:
            log.debug("%r: could not answer %s: %s", self.node, query.asker.address, exc)

    # -- answers -----------------------------------------------------------------------

    def _on_found(self, caller: PeerIdentity, args: list[Any]) -> None:
        found = Found.from_wire(args, self.node.space)
        if found.nodes:
            messages.self_arg(found.nodes[0].to_wire(), self.node.space, caller, "found")
        self._settle(found)

    def _settle(self, found: Found) -> None:
        waiting = self._waiting.get(found.nonce)
        if waiting is None or waiting.key != found.key or waiting.done.is_set():
            return  # late, or not an answer to anything we asked
        problem = self._problem(found)
        if problem:
            waiting.reason = problem
        else:
            nodes = in_ring_order(self.node.space, found.key, found.nodes)
            start = found.arc_start.id if found.arc_start else (found.key - 1) % self.node.space.size
            waiting.result = LookupResult(found.key, nodes[0], nodes, found.path, 0, start)
        waiting.done.set()

    def _problem(self, found: Found) -> str | None:
        """Why an answer cannot be believed, or None."""
        if not found.nodes:
            return "a hop gave up on the query"
        owner = found.nodes[0]
        if found.arc_start is None:
            return "the owner knows no predecessor" if owner.id != self.node.me.id else None
        if not in_half_open(found.key, found.arc_start.id, owner.id):
            return "the key does not lie in the arc the owner claims"
        return None
