"""The Chord node: join, stabilize, notify, fix_fingers, check_predecessor,
iterative lookups, graceful leave, and the RPC surface peers call.

Owns the protocol's behaviour over time. Routing decisions come from
`dht.routing`; the network is whatever `Transport` it is given; time is read only
through trio. The same code therefore runs over TCP and on the simulated network.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from .errors import BadRequest, CallTimeout, ChordError, LookupFailed, RemoteError, TransportError
from .ids import DEFAULT_BITS, IdSpace, in_open
from .routing import DepartedPeers, NodeRef, Owner, RoutingTable, refs_from_wire, refs_to_wire
from .transport import Transport

log = logging.getLogger(__name__)

MAX_STABILIZE_WALK = 32
MAX_EXCLUDED = 16
JOIN_ATTEMPTS = 3


@dataclass(frozen=True)
class NodeConfig:
    """Protocol settings; intervals and timeouts are in seconds."""

    bits: int = DEFAULT_BITS
    successor_list_size: int = 8
    stabilize_interval: float = 1.0
    fix_fingers_interval: float = 1.0
    check_predecessor_interval: float = 2.0
    jitter: float = 0.5
    rpc_timeout: float = 1.0
    rpc_attempts: int = 2
    lookup_timeout: float = 10.0
    candidates_per_step: int = 3

    @classmethod
    def every(cls, interval: float, **settings: Any) -> "NodeConfig":
        """Settings with stabilize, fix_fingers and check_predecessor all at `interval`."""
        return cls(
            stabilize_interval=interval,
            fix_fingers_interval=interval,
            check_predecessor_interval=interval,
            **settings,
        )

    def __post_init__(self) -> None:
        for name in ("stabilize_interval", "fix_fingers_interval", "check_predecessor_interval", "rpc_timeout", "lookup_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.rpc_attempts < 1:
            raise ValueError("rpc_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


@dataclass(frozen=True)
class LookupResult:
    """The owner of a key, the nodes after it, and the route the lookup took."""

    key: int
    owner: NodeRef
    successors: list[NodeRef]
    path: list[NodeRef] = field(default_factory=list)
    timeouts: int = 0

    @property
    def hops(self) -> int:
        """Remote nodes that answered a routing step."""
        return len(self.path)

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "owner": self.owner.to_wire(),
            "successors": refs_to_wire(self.successors),
            "path": refs_to_wire(self.path),
            "hops": self.hops,
            "timeouts": self.timeouts,
        }


def _expect(args: list[Any], count: int, method: str) -> list[Any]:
    if len(args) != count:
        raise BadRequest(f"{method} takes {count} argument(s), got {len(args)}")
    return args


def _node_arg(value: Any, method: str) -> NodeRef:
    try:
        return NodeRef.from_wire(value)
    except ValueError as exc:
        raise BadRequest(f"{method}: {exc}") from None


class ChordNode:
    """One Chord node bound to a transport."""

    def __init__(
        self,
        transport: Transport,
        config: NodeConfig = NodeConfig(),
        node_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.space = IdSpace(config.bits)
        self.transport = transport
        ident = self.space.node_id(transport.address) if node_id is None else self.space.check(node_id)
        self.me = NodeRef(ident, transport.address)
        self.routing = RoutingTable(self.me, self.space, config.successor_list_size)
        self.departed = DepartedPeers()
        self.rng = rng or random.Random(ident)
        self._next_finger = 0
        self._maintenance: trio.CancelScope | None = None
        self._handlers: dict[str, Callable[[list[Any]], Any]] = {
            "ping": self._on_ping,
            "step": self._on_step,
            "notify": self._on_notify,
            "consider_successor": self._on_consider_successor,
            "successor_leaving": self._on_successor_leaving,
            "predecessor_leaving": self._on_predecessor_leaving,
            "info": self._on_info,
            "lookup": self._on_lookup,
        }
        transport.set_handler(self.handle)

    def register(self, method: str, handler: Callable[[list[Any]], Any]) -> None:
        """Serve another RPC method (a service built on the ring, such as block storage)."""
        if method in self._handlers:
            raise ValueError(f"method {method!r} is already served")
        self._handlers[method] = handler

    def __repr__(self) -> str:
        return f"<ChordNode {self.space.short(self.me.id)} at {self.me.address}>"

    # -- outgoing calls ------------------------------------------------------------

    async def call(self, node: NodeRef, method: str, *args: Any) -> Any:
        """Call a peer, asking again after a timeout (a lost message is not a dead
        node) up to `rpc_attempts` times; a refused connection is final."""
        timeout = self.config.rpc_timeout
        for _ in range(self.config.rpc_attempts - 1):
            try:
                return await self.transport.call(node.address, method, list(args), timeout=timeout)
            except CallTimeout:
                pass
        return await self.transport.call(node.address, method, list(args), timeout=timeout)

    async def _notify(self, node: NodeRef) -> tuple[NodeRef | None, list[NodeRef]]:
        """Tell node we may be its predecessor; get back the predecessor it had before
        (the paper's successor.predecessor) and its successor list."""
        reply = await self.call(node, "notify", self.me.to_wire())
        predecessor = NodeRef.from_wire(reply[0]) if reply[0] is not None else None
        return predecessor, refs_from_wire(reply[1])

    # -- joining and leaving -----------------------------------------------------

    async def join(self, bootstrap: str | None) -> None:
        """Join the ring through any node at `bootstrap`, or start a new ring when None."""
        if bootstrap is None or bootstrap == self.me.address:
            log.info("%r starts a new ring", self)
            return
        result = await self._find_place_via(bootstrap)
        successor = result.owner
        if successor.id == self.me.id:
            raise ChordError(f"node ID {self.space.short(self.me.id)} is already in the ring at {successor.address}")
        try:
            previous, its_successors = await self._notify(successor)
        except TransportError:  # stabilize will fill in the successor list
            previous, its_successors = None, []
        self.routing.set_successors(successor, its_successors)
        await self._walk_back(previous)
        await self._announce_to(previous)
        for node in (*result.path, *its_successors):
            self.routing.learn(node)
        log.info("%r joined via %s; successor %s", self, bootstrap, successor.address)

    async def _find_place_via(self, bootstrap: str) -> LookupResult:
        """Look up our own ID starting at the bootstrap node, retrying lost messages."""
        failure: ChordError = LookupFailed(f"cannot join via {bootstrap}")
        for attempt in range(JOIN_ATTEMPTS):
            if attempt:  # give the ring a stabilize round to drop stale pointers
                await trio.sleep(self.config.stabilize_interval)
            try:
                entry = NodeRef.from_wire(await self.call(NodeRef(0, bootstrap), "ping"))
                return await self._iterate(self.me.id, entry, self.config.lookup_timeout)
            except (TransportError, LookupFailed) as exc:
                failure = exc
        raise failure

    async def _announce_to(self, predecessor: NodeRef | None) -> None:
        """Tell the node before us that we now follow it, so it need not wait for its
        next stabilize; it checks the claim against its own view first."""
        if predecessor is None or not in_open(self.me.id, predecessor.id, self.routing.successor.id):
            return
        try:
            adopted = await self.call(predecessor, "consider_successor", self.me.to_wire())
        except (TransportError, RemoteError):
            return
        if adopted is True and self.routing.predecessor is None:
            self.routing.set_predecessor(predecessor)

    async def leave(self) -> None:
        """Leave gracefully: hand predecessor and successor to each other, then stop."""
        self.stop()
        predecessor, successors = self.routing.predecessor, list(self.routing.successors)
        pred_wire = predecessor.to_wire() if predecessor else None
        if successors:
            await self._try(successors[0], "predecessor_leaving", self.me.to_wire(), pred_wire)
        if predecessor is not None and predecessor.id != self.me.id:
            await self._try(predecessor, "successor_leaving", self.me.to_wire(), refs_to_wire(successors))
        log.info("%r left the ring", self)

    async def _try(self, node: NodeRef, method: str, *args: Any) -> None:
        try:
            await self.call(node, method, *args)
        except (TransportError, RemoteError) as exc:
            log.warning("%r: %s to %s failed: %s", self, method, node.address, exc)

    # -- maintenance ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run stabilize, fix_fingers and check_predecessor until `stop` or cancellation."""
        cfg = self.config
        async with trio.open_nursery() as nursery:
            self._maintenance = nursery.cancel_scope
            nursery.start_soon(self._every, cfg.stabilize_interval, self.stabilize)
            nursery.start_soon(self._every, cfg.fix_fingers_interval, self.fix_fingers)
            nursery.start_soon(self._every, cfg.check_predecessor_interval, self.check_predecessor)
            task_status.started()

    def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        spread = self.config.jitter
        while True:
            await trio.sleep(interval * self.rng.uniform(1 - spread, 1 + spread))
            try:
                await action()
            except (ChordError, ValueError) as exc:
                log.debug("%r: %s failed: %s", self, action.__name__, exc)

    async def stabilize(self) -> None:
        """Verify our successor, adopt a closer one if it has appeared, and notify it.

        A burst of joins can put many nodes between us and our successor; rather than
        moving back one node per round, follow successor.predecessor while it is
        closer, up to `MAX_STABILIZE_WALK` nodes in one round."""
        routing = self.routing
        while routing.successors:
            successor = routing.successor
            try:
                between, its_successors = await self._notify(successor)
            except (TransportError, RemoteError):
                if routing.successor == successor:
                    self._drop_unreachable(successor)
                    log.info("%r: successor %s unreachable; next is %s", self, successor.address, routing.successor.address)
                continue
            if routing.successor != successor:
                return  # changed while we waited (a leave notice, a closer joiner): next round
            routing.set_successors(successor, its_successors)
            await self._walk_back(between)
            return
        if routing.known_nodes():  # lost every successor, but not the ring
            await self._rejoin()

    async def _walk_back(self, between: NodeRef | None) -> None:
        for _ in range(MAX_STABILIZE_WALK):
            successor = self.routing.successor
            if between is None or not in_open(between.id, self.me.id, successor.id):
                return
            try:
                closer_between, closer_successors = await self._notify(between)
            except (TransportError, RemoteError):
                return
            if self.routing.successor != successor:
                return
            self.routing.set_successors(between, closer_successors)
            between = closer_between

    def _drop_unreachable(self, node: NodeRef) -> bool:
        """Forget a peer that did not answer, but remember it for later probes;
        return whether it was known."""
        known = self.routing.forget(node.id)
        if known:
            self.departed.remember(node)
        return known

    async def _rejoin(self) -> None:
        """Every successor failed: find the node after us again, starting from any
        other node we still know. (Adopting our predecessor as successor, as a lone
        node does, would close a small loop of its own beside the ring.)"""
        after_me = (self.me.id + 1) % self.space.size
        for node in self.routing.known_nodes():
            try:
                result = await self._iterate(after_me, node, self.config.lookup_timeout)
            except ChordError:
                self._drop_unreachable(node)
                continue
            if result.owner.id != self.me.id:
                self.routing.set_successors(result.owner, result.successors[1:])
                log.info("%r: lost every successor; found %s again", self, result.owner.address)
                return

    async def fix_fingers(self) -> None:
        """Refresh the next finger, and every later finger the same node answers;
        once per round of the table, check that no part of the ring skips us."""
        index = self._next_finger
        result = await self.lookup(self.space.finger_start(self.me.id, index))
        self._next_finger = self.routing.fill_fingers(index, result.owner)
        if self._next_finger == 0:
            await self.check_not_skipped()

    async def check_not_skipped(self) -> None:
        """Strong stabilization, after Liben-Nowell et al. After mass failures or a
        healed partition the ring can settle into separate loops, each consistent
        from inside, which stabilize never merges. Look up our own ID from another
        node with ourselves kept out of the route: the node that answers precedes
        us somewhere; if its successor lies past us, it is skipping us, so we tell
        it (it checks the claim against its own view). The lookup starts from a
        departed peer that answers again, if there is one (that finds a ring we
        were cut off from), and otherwise from a random known node."""
        start = await self._departed_peer_back()
        if start is None:
            others = self.routing.known_nodes()  # never includes us
            if not others:
                return
            start = self.rng.choice(others)
        result = await self._iterate(self.me.id, start, self.config.lookup_timeout, frozenset([self.me.id]))
        if not result.path:
            return
        answerer = result.path[-1]
        predecessor = self.routing.predecessor
        if (predecessor is None or answerer.id != predecessor.id) and in_open(self.me.id, answerer.id, result.owner.id):
            try:
                if await self.call(answerer, "consider_successor", self.me.to_wire()) is True:
                    log.info("%r: %s was skipping us; it follows us now", self, answerer.address)
            except (TransportError, RemoteError):
                pass

    async def _departed_peer_back(self) -> NodeRef | None:
        """Probe the departed peer waiting longest; return it if it answers."""
        node = self.departed.next_to_probe()
        if node is None:
            return None
        try:
            answer = NodeRef.from_wire(await self.call(node, "ping"))
        except (TransportError, RemoteError, ValueError):
            self.departed.probe_failed(node)
            return None
        self.departed.discard(node.id)
        log.info("%r: departed peer %s answers again", self, node.address)
        return answer

    async def check_predecessor(self) -> None:
        predecessor = self.routing.predecessor
        if predecessor is None:
            return
        try:
            await self.call(predecessor, "ping")
        except (TransportError, RemoteError):
            if self.routing.predecessor == predecessor:
                self.routing.set_predecessor(None)
                self.departed.remember(predecessor)
                log.info("%r: predecessor %s failed", self, predecessor.address)

    # -- lookups -------------------------------------------------------------------

    async def lookup(self, key: int, timeout: float | None = None) -> LookupResult:
        """Find successor(key), driving each hop from here and skipping dead hops."""
        self.space.check(key)
        return await self._iterate(key, self.me, timeout or self.config.lookup_timeout)

    async def _iterate(self, key: int, origin: NodeRef, timeout: float, exclude: frozenset[int] = frozenset()) -> LookupResult:
        """Iterative routing from `origin` (this node, answered locally, or a
        bootstrap node). The closest known node preceding the key is asked next;
        a hop that fails joins the dead set, which every later step excludes, and a
        node already asked is asked again when the dead set has grown since."""
        frontier = {origin.address: origin}
        asked: dict[str, int] = {}
        dead: set[int] = set(exclude)
        path: list[NodeRef] = []
        timeouts = 0
        with trio.move_on_after(timeout):
            while frontier or self._ask_again(frontier, [origin, *path], asked, len(dead)):
                hop = min(frontier.values(), key=lambda n: self.space.distance(n.id, key))
                del frontier[hop.address]
                asked[hop.address] = len(dead)
                try:
                    kind, nodes = await self._step(hop, key, dead)
                except (TransportError, RemoteError, ValueError) as exc:
                    timeouts += 1
                    dead.add(hop.id)
                    if self._drop_unreachable(hop):
                        log.debug("%r: dropped unresponsive %s: %s", self, hop.address, exc)
                    continue
                if hop.address != self.me.address and hop not in path:
                    path.append(hop)
                if kind == "owner":
                    return LookupResult(key, nodes[0], nodes, path, timeouts)
                for node in nodes:
                    if node.id not in dead and node.address not in asked and in_open(node.id, hop.id, key):
                        frontier[node.address] = node
            raise LookupFailed(f"no live route to key {self.space.short(key)} ({len(path)} hops, {timeouts} failed)")
        raise LookupFailed(f"lookup of {self.space.short(key)} timed out after {timeout:g}s ({len(path)} hops)")

    @staticmethod
    def _ask_again(frontier: dict[str, NodeRef], answered: list[NodeRef], asked: dict[str, int], dead_count: int) -> bool:
        """Put back the furthest node that answered before more hops were found dead."""
        for node in reversed(answered):
            if asked.get(node.address, dead_count) < dead_count:
                frontier[node.address] = node
                return True
        return False

    async def _step(self, hop: NodeRef, key: int, dead: set[int]) -> tuple[str, list[NodeRef]]:
        if hop.address == self.me.address:
            answer = self.routing.route(key, None, frozenset(dead))
            return ("owner" if isinstance(answer, Owner) else "next"), answer.nodes
        excluded = sorted(dead)[:MAX_EXCLUDED]
        kind, nodes = await self.call(hop, "step", key, excluded) if excluded else await self.call(hop, "step", key)
        if kind not in ("owner", "next") or (kind == "owner" and not nodes):
            raise ValueError(f"bad step reply from {hop.address}: {kind!r}")
        return kind, refs_from_wire(nodes)

    # -- serving -------------------------------------------------------------------

    def handle(self, method: str, args: list[Any]) -> Any:
        """Answer one incoming call: the result itself, or an awaitable of it for
        calls that need the network (lookup). Bad requests raise BadRequest."""
        handler = self._handlers.get(method)
        if handler is None:
            raise BadRequest(f"unknown method {method!r}")
        return handler(args)

    def _key_arg(self, value: Any, method: str) -> int:
        try:
            return self.space.check(value)
        except ValueError as exc:
            raise BadRequest(f"{method}: {exc}") from None

    def _on_ping(self, args: list[Any]) -> list[Any]:
        return self.me.to_wire()

    def _on_step(self, args: list[Any]) -> list[Any]:
        if len(args) not in (1, 2):
            raise BadRequest(f"step takes a key and an optional list of dead node IDs, got {len(args)} arguments")
        key = self._key_arg(args[0], "step")
        excluded = args[1] if len(args) == 2 else []
        if not isinstance(excluded, list) or len(excluded) > MAX_EXCLUDED:
            raise BadRequest(f"step: dead node IDs must be a list of at most {MAX_EXCLUDED}")
        dead = frozenset(self._key_arg(ident, "step") for ident in excluded)
        answer = self.routing.route(key, self.config.candidates_per_step, dead)
        return ["owner" if isinstance(answer, Owner) else "next", refs_to_wire(answer.nodes)]

    def _on_notify(self, args: list[Any]) -> list[Any]:
        (value,) = _expect(args, 1, "notify")
        candidate = _node_arg(value, "notify")
        routing = self.routing
        predecessor = routing.predecessor
        # A node that knows no other (a new ring's founder, or the last one left)
        # takes the notifier as its successor too; one that merely lost its
        # successors must not, or it closes a small loop beside the ring.
        lonely = not routing.successors and not routing.known_nodes()
        if candidate.id != self.me.id:
            if predecessor is None or in_open(candidate.id, predecessor.id, self.me.id):
                routing.set_predecessor(candidate)
                log.info("%r: predecessor is now %s", self, candidate.address)
            if lonely:
                routing.set_successors(candidate, [])
        return [predecessor.to_wire() if predecessor else None, refs_to_wire(routing.successors)]

    def _on_consider_successor(self, args: list[Any]) -> bool:
        (value,) = _expect(args, 1, "consider_successor")
        candidate = _node_arg(value, "consider_successor")
        routing = self.routing
        if candidate.id == self.me.id or not in_open(candidate.id, self.me.id, routing.successor.id):
            return False
        routing.set_successors(candidate, routing.successors)
        return True

    def _on_successor_leaving(self, args: list[Any]) -> None:
        leaver_wire, successors_wire = _expect(args, 2, "successor_leaving")
        leaver = _node_arg(leaver_wire, "successor_leaving")
        try:
            its_successors = [n for n in refs_from_wire(successors_wire) if n.id != self.me.id]
        except ValueError as exc:
            raise BadRequest(f"successor_leaving: {exc}") from None
        was_successor = self.routing.successor.id == leaver.id
        self.routing.forget(leaver.id)
        self.departed.discard(leaver.id)
        if was_successor and its_successors:
            self.routing.set_successors(its_successors[0], its_successors[1:])

    def _on_predecessor_leaving(self, args: list[Any]) -> None:
        leaver_wire, predecessor_wire = _expect(args, 2, "predecessor_leaving")
        leaver = _node_arg(leaver_wire, "predecessor_leaving")
        replacement = None if predecessor_wire is None else _node_arg(predecessor_wire, "predecessor_leaving")
        was_predecessor = self.routing.predecessor is not None and self.routing.predecessor.id == leaver.id
        self.routing.forget(leaver.id)
        self.departed.discard(leaver.id)
        if was_predecessor:
            self.routing.set_predecessor(replacement)

    def _on_info(self, args: list[Any]) -> dict[str, Any]:
        routing = self.routing
        return {
            "address": self.me.address,
            "id": self.me.id,
            "bits": self.space.bits,
            "predecessor": routing.predecessor.to_wire() if routing.predecessor else None,
            "successors": refs_to_wire(routing.successors),
            "fingers": refs_to_wire({f.id: f for f in routing.fingers if f is not None}.values()),
        }

    async def _on_lookup(self, args: list[Any]) -> dict[str, Any]:
        (key,) = _expect(args, 1, "lookup")
        result = await self.lookup(self._key_arg(key, "lookup"))
        return result.to_wire()
