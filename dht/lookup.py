"""Iterative lookups: find successor(key) by asking nodes one routing step at a time.

Owns the search itself, shared by ring nodes (`ChordNode.lookup`) and clients
outside the ring (`DhtClient`), so a client checks the replica set with a lookup
of its own rather than trusting one node's word. Each step goes to the known
node closest before the key; a hop that fails joins a dead set that every later
step excludes, and a node already asked is asked again once the dead set has
grown. How a step reaches a node (a local table or an RPC) is the caller's `Step`.

An owner answer is believed only if it could be true (`owner_answer_problem`): the
key falls between the hop and the owner it names; a hop whose answer fails that is
treated like a dead one. An owner named by another node must then confirm it
(`confirm_owner`): its own predecessor pointer shows whether a node that joined in
between holds the key instead, and the lookup walks back to that node. Of the nodes
after the owner, only the run that is distinct and in ring order is kept
(`in_ring_order`), so a liar cannot name itself r times as a whole replica set, and
a stale entry cannot slip in out of order.

`StartingPoints` is a client's memory of the nodes its lookups met, so that each
lookup starts at the known node closest before its key instead of at the entry
node: in a small ring that is usually the owner's predecessor, one step away.
`ReplicaCache` keeps recent answers for reads, which need no lookup at all while
an answer is fresh (blocks are verified by hash, so a stale answer costs a miss,
never a wrong byte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio
from sortedcontainers import SortedDict

from .errors import BadReply, ChordError, LookupFailed, RemoteError, RoutingLoop, TransportError
from .ids import IdSpace, in_half_open, in_open
from .messages import LookupResult
from .routing import NodeRef

# One routing step at `hop` for `key`, treating `dead` as failed:
# (True, [owner, successors...]) or (False, [nodes to ask next]).
Step = Callable[[NodeRef, int, frozenset[int]], Awaitable[tuple[bool, list[NodeRef]]]]
# The arc a node believes it owns: (its predecessor or None, its successors). With
# patient=True the caller waits as long as it ever waits for a peer: a node that
# does not answer then is taken for dead, and that decides an owner.
Arc = Callable[[NodeRef, bool], Awaitable[tuple[NodeRef | None, list[NodeRef]]]]
OnDead = Callable[[NodeRef, ChordError], None]
MOST_CONFIRM_STEPS = 16  # predecessors walked back from a named owner before giving up
SPARE_STEPS = 16  # steps a lookup may spend on hops that fail, beyond a sound route's
DEFAULT_SIZE_GUESS = 1 << 16  # ring size assumed when the caller cannot estimate it


def hop_limit(estimated_nodes: int) -> int:
    """Steps a lookup may take in a ring of about `estimated_nodes` nodes: twice
    the log2 N hops of a sound route, plus room for hops that fail on the way.
    A lookup past it is lost (following stale pointers round the ring) and
    should start again elsewhere."""
    return 2 * math.ceil(math.log2(max(estimated_nodes, 2))) + SPARE_STEPS


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
    arc: Arc | None = None,
    max_steps: int = hop_limit(DEFAULT_SIZE_GUESS),
) -> LookupResult:
    """Route from `origin` to the owner of `key` within `timeout` seconds.

    `local_address` is a hop answered from local state, left out of the path;
    `on_dead` hears of every hop that failed. With `arc`, an owner named by another
    node is believed only once it confirms that its own arc holds the key
    (`confirm_owner`). Raises LookupFailed; RoutingLoop after `max_steps` steps."""
    frontier = {origin.address: origin}
    asked: dict[str, int] = {}  # address -> how many nodes were known dead when it was asked
    answered: dict[str, NodeRef] = {}
    dead: set[int] = set(exclude)
    path: list[NodeRef] = []
    timeouts = steps = 0
    with trio.move_on_after(timeout):
        while (hop := _next_hop(space, key, frontier, answered, asked, dead)) is not None:
            if steps == max_steps:
                raise RoutingLoop(f"lookup of {space.short(key)} gave up after {steps} steps, a hop limit for this ring size")
            steps += 1
            frontier.pop(hop.address, None)
            asked[hop.address] = len(dead)
            try:
                found, nodes = await step(hop, key, frozenset(dead))
                problem = owner_answer_problem(space, key, hop, nodes) if found else None
                if found and nodes == [hop] and hop.address != origin.address:
                    problem = "it claims the whole ring alone, though another node named it"
                if problem:
                    raise BadReply(f"{hop.address} gave an impossible owner answer: {problem}")
            except (TransportError, RemoteError) as exc:
                timeouts += 1
                _mark_dead(hop, exc, dead, on_dead)
                continue
            answered[hop.address] = hop
            if hop.address != local_address and hop not in path:
                path.append(hop)
            if found and arc is not None and nodes[0].id != hop.id:
                try:
                    nodes = await confirm_owner(space, key, nodes, arc, dead)
                except (TransportError, RemoteError) as exc:  # the named owner is gone: the hop is asked again
                    timeouts += 1
                    _mark_dead(nodes[0], exc, dead, on_dead)
                    continue
            if found:
                nodes = in_ring_order(space, key, nodes)
                arc_start = hop.id if hop.id != nodes[0].id else (key - 1) % space.size
                return LookupResult(key, nodes[0], nodes, path, timeouts, arc_start)
            for node in nodes:
                if node.id not in dead and node.address not in asked and in_open(node.id, hop.id, key):
                    frontier[node.address] = node
        raise LookupFailed(f"no live route to key {space.short(key)} ({len(path)} hops, {timeouts} failed)", tuple(answered.values()))
    raise LookupFailed(f"lookup of {space.short(key)} timed out after {timeout:g}s ({len(path)} hops)")


def _next_hop(
    space: IdSpace, key: int, frontier: dict[str, NodeRef], answered: dict[str, NodeRef], asked: dict[str, int], dead: set[int]
) -> NodeRef | None:
    """The node to ask next: the one closest before the key among those not asked
    yet and those that answered before more nodes were found dead (their answer
    may have pointed at one of them, and asked again they route around it)."""
    known_dead = len(dead)
    again = [n for n in answered.values() if asked[n.address] < known_dead and n.id not in dead]
    candidates = [*frontier.values(), *again]
    return min(candidates, key=lambda n: space.distance(n.id, key)) if candidates else None


def _mark_dead(node: NodeRef, error: ChordError, dead: set[int], on_dead: OnDead | None) -> None:
    dead.add(node.id)
    if on_dead is not None:
        on_dead(node, error)


async def confirm_owner(space: IdSpace, key: int, nodes: list[NodeRef], arc: Arc, dead: set[int]) -> list[NodeRef]:
    """The owner of `key` and its successors, from the owner itself. A hop names
    its successor as the owner; the successor's predecessor pointer says whether a
    node that joined in between owns the key instead. So walk back through
    predecessors while they lie at or after the key: each step is closer to the
    key, so the walk ends. A predecessor is asked even when this lookup found it
    silent before, and patiently: a lost message or a far node is not a dead
    node, and the node after it, which checks on it, still counts on it; taking
    it for dead names the wrong owner. A named owner that fails to answer
    raises (the caller drops it and asks again); a predecessor that fails is
    dead, so the node after it owns the key. Raises LookupFailed after
    MOST_CONFIRM_STEPS steps."""
    candidate, confirmed = nodes[0], nodes
    for step in range(MOST_CONFIRM_STEPS):
        try:
            predecessor, successors = await arc(candidate, step > 0)
            if predecessor is None and not successors:
                raise BadReply(f"{candidate.address} was named as an owner but knows no other node")
        except (TransportError, RemoteError):
            if step == 0:
                raise
            dead.add(candidate.id)
            return confirmed
        confirmed = [candidate, *successors]
        if predecessor is None or in_half_open(key, predecessor.id, candidate.id):
            return confirmed
        dead.discard(predecessor.id)  # its own successor still counts on it: try it again
        candidate = predecessor  # it lies in [key, candidate): nearer the key
    raise LookupFailed(f"owner of key {space.short(key)} not confirmed within {MOST_CONFIRM_STEPS} steps")


def owner_answer_problem(space: IdSpace, key: int, hop: NodeRef, nodes: list[NodeRef]) -> str | None:
    """Why an owner answer [owner, successors...] from `hop` cannot be right, or None.
    The key must lie in (hop, owner]; a hop that names itself claims its own arc,
    which only it can know."""
    if not nodes:
        return "it names no node"
    if hop.id != nodes[0].id and not in_half_open(key, hop.id, nodes[0].id):
        return "the key does not lie between the hop and the owner it names"
    return None


def in_ring_order(space: IdSpace, key: int, nodes: list[NodeRef]) -> list[NodeRef]:
    """The leading run of `nodes` that goes clockwise from the key without repeats."""
    kept = nodes[:1]
    for node in nodes[1:]:
        if space.distance(key, node.id) <= space.distance(key, kept[-1].id):
            break
        kept.append(node)
    return kept


class StartingPoints:
    """Nodes a client has met, to start each lookup near its key. Bounded; a node
    that failed a step is forgotten; the entry node is always there to fall back on."""

    def __init__(self, space: IdSpace, entry: NodeRef, capacity: int = 1024) -> None:
        self.space, self.entry, self.capacity = space, entry, capacity
        self._nodes: SortedDict = SortedDict({entry.id: entry})  # ID -> NodeRef

    def learn(self, nodes: list[NodeRef]) -> None:
        for node in nodes:
            if node.id not in self._nodes and len(self._nodes) < self.capacity:
                self._nodes[node.id] = node

    def forget(self, node: NodeRef, error: ChordError | None = None) -> None:
        if node.id != self.entry.id:
            self._nodes.pop(node.id, None)

    def before(self, key: int) -> NodeRef:
        """The known node closest before `key` (or at it): the last ID at or below
        the key, or the highest of all when none is (the circle wraps)."""
        index = self._nodes.bisect_right(key) - 1
        node: NodeRef = self._nodes.peekitem(index)[1]  # index -1 is the highest ID
        return node


@dataclass(frozen=True, slots=True)
class _Cached:
    result: LookupResult
    at: float  # when the lookup answered


class ReplicaCache:
    """Recent lookup answers: an answer naming owner O after hop H holds for every
    key in (H, O]. Reads trust it for `ttl` seconds (a block is checked by its
    hash, so a stale answer can only miss); writes pass a shorter `max_age`, so a
    put lands where a lookup of the same moment would put it, give or take a
    join of that last instant, which repair then covers as for any earlier put.
    Pure: the caller passes the time."""

    def __init__(self, ttl: float = 5.0, capacity: int = 1024) -> None:
        self.ttl, self.capacity = ttl, capacity
        self._by_owner: SortedDict = SortedDict()  # owner ID -> _Cached

    def remember(self, result: LookupResult, now: float) -> None:
        if result.arc_start is None:
            return
        if len(self._by_owner) >= self.capacity and result.owner.id not in self._by_owner:
            self._by_owner.popitem(0)
        self._by_owner[result.owner.id] = _Cached(result, now)

    def replicas(self, key: int, now: float, max_age: float | None = None) -> list[NodeRef] | None:
        """The cached owner and successors for `key`, if an answer no older than
        `max_age` (by default the ttl) covers it."""
        cached = self._covering(key)
        if cached is None or now - cached.at > (self.ttl if max_age is None else max_age):
            return None
        return cached.result.successors

    def drop(self, key: int) -> None:
        """Forget the answer covering `key` (its nodes did not have a block)."""
        cached = self._covering(key)
        if cached is not None:
            del self._by_owner[cached.result.owner.id]

    def _covering(self, key: int) -> _Cached | None:
        if not self._by_owner:
            return None
        index = self._by_owner.bisect_left(key)
        cached: _Cached = self._by_owner.peekitem(index % len(self._by_owner))[1]  # the first owner at or after key
        return cached if cached.result.covers(key) else None
