"""Chord routing state: finger table, successor list and predecessor.

Owns what one node knows about the ring and the decisions made from it alone:
which node owns a key if it can tell, the closest preceding candidates otherwise,
how a successor list is merged from a successor's (one position per process),
which processes hold a key's copies, and which fingers a single lookup result
fills. Pure: no I/O, no time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .addresses import host_of
from .errors import describe
from .ids import IdSpace, in_half_open, in_open

MAX_ADDRESS = 262  # a DNS name of 253 characters, a colon and a port, in brackets for IPv6
MAX_REFS = 300  # node references in one message: successor lists and a 256-bit finger table


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node as peers see it: its ring ID and the address it answers on."""

    id: int
    address: str

    def to_wire(self) -> list[Any]:
        return [self.address, self.id]

    @classmethod
    def from_wire(cls, value: Any, space: IdSpace) -> "NodeRef":
        """Decode [address, id], the ID inside `space`; raise ValueError on anything else."""
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"expected a node reference [address, id], got {describe(value)}")
        address, ident = value
        if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS:
            raise ValueError(f"a node address must be a string of 1..{MAX_ADDRESS} characters, got {describe(address)}")
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident < space.size:
            raise ValueError(f"a node ID must be an integer in [0, 2^{space.bits}), got {describe(ident)}")
        return cls(id=ident, address=address)


def refs_to_wire(nodes: Iterable[NodeRef]) -> list[list[Any]]:
    return [node.to_wire() for node in nodes]


def refs_from_wire(value: Any, space: IdSpace, limit: int = MAX_REFS) -> list[NodeRef]:
    """Decode a list of at most `limit` node references."""
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise ValueError(f"expected a list of at most {limit} node references, got {describe(value)}")
    return [NodeRef.from_wire(item, space) for item in value]


@dataclass(frozen=True, slots=True)
class Owner:
    """Routing answer: `nodes[0]` owns the key; the rest follow it on the ring."""

    nodes: list[NodeRef]


@dataclass(frozen=True, slots=True)
class Forward:
    """Routing answer: ask these nodes next, best (closest preceding the key) first."""

    nodes: list[NodeRef]


def merge_successor_list(
    me: NodeRef, successor: NodeRef, its_successors: Sequence[NodeRef], size: int
) -> list[NodeRef]:
    """Our successor list: the successor (unless it is us), then its list up to us
    (past us a list would run round the ring a second time), without repeats, and
    with one position per process (`addresses.host_of`): a process's virtual nodes
    fail and leave together, so a second one of them adds no fallback, and the
    list spans as many machines as it holds entries."""
    merged: list[NodeRef] = []
    seen: set[int] = {me.id}
    hosts: set[str] = set()
    for position, node in enumerate((successor, *its_successors)):
        if node.id == me.id and position > 0:
            break
        host = host_of(node.address)
        if node.id not in seen and host not in hosts:
            seen.add(node.id)
            hosts.add(host)
            merged.append(node)
        if len(merged) == size:
            break
    return merged


def distinct_hosts(nodes: Iterable[NodeRef], limit: int | None = None, besides: str | None = None) -> list[NodeRef]:
    """The first node of each process in `nodes` (order kept), skipping the process
    `besides`, at most `limit` of them: where r copies of a block go, so that no
    machine holds two of them."""
    chosen: list[NodeRef] = []
    hosts: set[str] = set() if besides is None else {host_of(besides)}
    for node in nodes:
        host = host_of(node.address)
        if host not in hosts:
            hosts.add(host)
            chosen.append(node)
            if len(chosen) == limit:
                break
    return chosen


class RoutingTable:
    """One node's view of the ring."""

    def __init__(self, me: NodeRef, space: IdSpace, successor_list_size: int = 8, lender: "RoutingTable | None" = None) -> None:
        """`lender`: the table of this process's first position, when this is a
        virtual node: its fingers are routing candidates here too (a virtual
        node's own fill up only in its turn, `dht.maintenance`)."""
        if successor_list_size < 1:
            raise ValueError("successor list size must be at least 1")
        self.me = me
        self.space = space
        self.successor_list_size = successor_list_size
        self.predecessor: NodeRef | None = None
        self.successors: list[NodeRef] = []
        self.fingers: list[NodeRef | None] = [None] * space.bits
        self._candidates: list[NodeRef] | None = None
        self.lender = lender
        self.version = 0  # counts changes of the routing candidates (a borrower's cache key)
        self._lent_version = -1
        self.cut_off = False  # every node it knew stopped answering: it is not alone, only lost


    # -- reading -----------------------------------------------------------------

    @property
    def successor(self) -> NodeRef:
        """The first successor, or this node itself when it knows no other."""
        return self.successors[0] if self.successors else self.me

    def finger_count(self) -> int:
        """How many distinct nodes the finger table points at."""
        return len({f.id for f in self.fingers if f is not None})

    def known_nodes(self) -> list[NodeRef]:
        """Every distinct other node in successor list, fingers and predecessor."""
        nodes = list(self._routing_candidates())
        if self.predecessor is not None and all(n.id != self.predecessor.id for n in nodes):
            nodes.append(self.predecessor)
        return nodes

    def estimated_size(self) -> int:
        """About how many nodes the ring has, from how densely the successor list
        covers the circle (Mercury's and Viceroy's estimate): r successors over a
        distance d suggest r · 2^bits / d nodes. At least the nodes known."""
        if not self.successors:
            return self.lender.estimated_size() if self.lender is not None else 1
        span = self.space.distance(self.me.id, self.successors[-1].id) or self.space.size
        # At least the nodes known: a list of one position per process can span many positions.
        return max(len(self.successors) * self.space.size // span, len(self._routing_candidates()) + 1)

    def arc_start(self) -> NodeRef | None:
        """The nearest node before this one that it knows of: its predecessor, or,
        while it has none, the known node closest before it (None if it knows
        none). A lookup confirming an owner walks back through these."""
        if self.predecessor is not None:
            return self.predecessor
        before = self.closest_preceding(self.me.id, 1)
        return before[0] if before else None

    def owns(self, key: int) -> bool:
        """True when key ∈ (predecessor, me]; a lone node owns everything."""
        if self.predecessor is None:
            return not self.successors
        return in_half_open(key, self.predecessor.id, self.me.id)

    def route(self, key: int, count: int | None = 3, exclude: frozenset[int] = frozenset()) -> Owner | Forward:
        """Answer a routing step for key from local state alone, treating the
        nodes in `exclude` as dead."""
        successors = [n for n in self.successors if n.id not in exclude] if exclude else self.successors
        predecessor = self.predecessor if self.predecessor and self.predecessor.id not in exclude else None
        # Alone only when it knows no other node at all: one that lost its successors
        # and predecessor but keeps fingers must not claim the whole ring, nor one
        # that lost every node it knew (`cut_off`).
        alone = predecessor is None and not successors and not self._routing_candidates() and not self.cut_off
        if alone or (predecessor is not None and in_half_open(key, predecessor.id, self.me.id)):
            return Owner([self.me, *successors])
        if not successors:  # lost them all: forward through whatever else we know
            return Forward(self.closest_preceding(key, count, exclude))
        if in_half_open(key, self.me.id, successors[0].id):
            # A list that ends at our predecessor ran round the whole ring: we come next.
            wrapped = predecessor is not None and successors[-1].id == predecessor.id
            return Owner([*successors, self.me] if wrapped else successors)
        return Forward(self.closest_preceding(key, count, exclude))

    def closest_preceding(self, key: int, count: int | None = 3, exclude: frozenset[int] = frozenset()) -> list[NodeRef]:
        """Known nodes strictly inside (me, key) and not excluded, closest to key
        first; all of them when count is None."""
        me = self.me.id
        found = [n for n in self._routing_candidates() if in_open(n.id, me, key) and n.id not in exclude]
        found.sort(key=lambda n: self.space.distance(n.id, key))
        return found if count is None else found[:count]

    # -- changing ----------------------------------------------------------------

    def set_successors(self, successor: NodeRef, its_successors: Sequence[NodeRef]) -> None:
        merged = merge_successor_list(self.me, successor, its_successors, self.successor_list_size)
        if merged:
            self.cut_off = False
        if merged != self.successors:  # most stabilize rounds change nothing: keep the candidates
            self.successors = merged
            self._changed()

    def set_predecessor(self, node: NodeRef | None) -> None:
        self.predecessor = None if node is not None and node.id == self.me.id else node

    def fill_fingers(self, index: int, node: NodeRef) -> int:
        """Record node = successor(finger_start(index)) and every later finger it also
        answers; return the next finger index still to fix (wrapping to 0)."""
        span = self.space.distance(self.me.id, node.id) if node.id != self.me.id else self.space.size
        bits = self.space.bits
        while index < bits and (1 << index) <= span:
            self.fingers[index] = None if node.id == self.me.id else node
            index += 1
        self._changed()
        return index % bits

    def finger_index(self, node_id: int) -> int:
        """The finger interval `node_id` lies in: i for [me + 2^i, me + 2^(i+1)); -1 for us."""
        return self.space.distance(self.me.id, node_id).bit_length() - 1

    def set_finger(self, index: int, node: NodeRef) -> None:
        """Make `node`, which must lie in finger `index`'s interval, that finger:
        any node there routes as well as the first, so proximity may choose."""
        if self.finger_index(node.id) != index:
            raise ValueError(f"{node.address} lies outside finger interval {index}")
        self.fingers[index] = node
        self._changed()

    def learn(self, node: NodeRef) -> None:
        """Use a node heard of elsewhere as a finger hint where its slot is empty or worse."""
        if node.id == self.me.id:
            return
        index = self.space.distance(self.me.id, node.id).bit_length() - 1
        current = self.fingers[index]
        start = self.space.finger_start(self.me.id, index)
        if current is None or self.space.distance(start, node.id) < self.space.distance(start, current.id):
            self.fingers[index] = node
            self._changed()

    def forget(self, node_id: int, gracefully: bool = False) -> bool:
        """Drop a node believed dead (or one that left `gracefully`) from every
        table; return whether it was known. Losing the last known node to a
        failure leaves the table `cut_off`. A virtual node tells its lender too: a
        dead peer is dead for the whole process."""
        if self.lender is not None:
            self.lender.forget(node_id, gracefully)
        known = False
        if self.predecessor is not None and self.predecessor.id == node_id:
            self.predecessor = None
            known = True
        remaining = [n for n in self.successors if n.id != node_id]
        if len(remaining) != len(self.successors):
            self.successors = remaining
            known = True
        for index, finger in enumerate(self.fingers):
            if finger is not None and finger.id == node_id:
                self.fingers[index] = None
                known = True
        if known:
            self._changed()
            if not gracefully and self.predecessor is None and not self.successors and not self._routing_candidates():
                self.cut_off = True
        return known

    def _changed(self) -> None:
        self._candidates = None
        self.version += 1

    def _routing_candidates(self) -> list[NodeRef]:
        lender = self.lender
        if lender is not None and self._lent_version != lender.version:
            self._candidates, self._lent_version = None, lender.version
        if self._candidates is None:
            distinct: dict[int, NodeRef] = {}
            borrowed = lender._routing_candidates() if lender is not None else ()
            for node in (*self.successors, *self.fingers, *borrowed):
                if node is not None and node.id != self.me.id:
                    distinct.setdefault(node.id, node)
            self._candidates = list(distinct.values())
        return self._candidates


@dataclass(slots=True)
class _Departed:
    node: NodeRef
    lost_at: float
    due: float
    failures: int = 0


class DepartedPeers:
    """Peers that stopped answering, remembered so they can be tried again.

    A partition looks like mass failure from either side: each side forgets the
    other and settles into a ring of its own. Once the partition heals, nothing in
    either ring points across, so only a memory of the lost peers can find the
    other ring again. A peer is probed again after a delay that doubles with each
    failed probe, from `first_retry` to `max_retry` seconds, so a partition of any
    length heals within about `max_retry` of its end; it is forgotten `max_age`
    after it was lost, or as soon as it answers. Bounded in size: the oldest memory
    goes when full. Pure: the caller passes the time."""

    def __init__(self, capacity: int = 16, first_retry: float = 1.0, max_retry: float = 60.0, max_age: float = 86_400.0) -> None:
        if capacity < 1 or not 0 < first_retry <= max_retry or max_age <= 0:
            raise ValueError("capacity must be at least 1, and 0 < first_retry <= max_retry, max_age > 0")
        self.capacity = capacity
        self.first_retry, self.max_retry, self.max_age = first_retry, max_retry, max_age
        self._peers: dict[int, _Departed] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._peers

    def remember(self, node: NodeRef, now: float) -> None:
        """Note a peer that did not answer, first probed `first_retry` from now;
        the oldest memory goes when full."""
        if node.id in self._peers:
            return
        if len(self._peers) >= self.capacity:
            del self._peers[next(iter(self._peers))]
        self._peers[node.id] = _Departed(node, now, now + self.first_retry)

    def discard(self, node_id: int) -> None:
        """Forget a peer for good: it answered, or it left gracefully."""
        self._peers.pop(node_id, None)

    def next_to_probe(self, now: float) -> NodeRef | None:
        """The peer whose probe is most overdue, if any is due; peers lost longer
        than `max_age` ago are forgotten on the way."""
        for node_id in [i for i, peer in self._peers.items() if now - peer.lost_at > self.max_age]:
            del self._peers[node_id]
        due = [peer for peer in self._peers.values() if peer.due <= now]
        return min(due, key=lambda peer: peer.due).node if due else None

    def probe_failed(self, node: NodeRef, now: float) -> None:
        """Count a failed probe: the next one waits twice as long (up to max_retry)."""
        peer = self._peers.get(node.id)
        if peer is not None:
            peer.failures += 1
            peer.due = now + min(self.first_retry * 2**peer.failures, self.max_retry)
