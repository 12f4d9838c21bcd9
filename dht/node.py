"""The Chord node: join, stabilize, notify, fix_fingers, check_predecessor,
iterative lookups, graceful leave, and the RPC surface peers call.

Owns the protocol's behaviour over time. Routing decisions come from
`dht.routing`; the network is whatever `Transport` it is given; time is read only
through trio. The same code therefore runs over TCP and on the simulated network.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import trio

from . import messages
from .errors import BadRequest, CallTimeout, ChordError, LookupFailed, RemoteError, TransportError
from .identity import PeerIdentity
from .ids import DEFAULT_BITS, IdSpace, in_open
from .lookup import iterate
from .messages import LookupResult, NodeInfo
from .routing import DepartedPeers, NodeRef, Owner, RoutingTable, refs_to_wire
from .transport import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_STABILIZE_WALK = 32
JOIN_ATTEMPTS = 3
RpcHandler = Callable[[PeerIdentity, list[Any]], Any]


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
        ident = self._own_id(transport, node_id)
        self.me = NodeRef(ident, transport.address)
        self.routing = RoutingTable(self.me, self.space, config.successor_list_size)
        self.departed = DepartedPeers()
        self.rng = rng or random.Random(ident)
        self._next_finger = 0
        self._maintenance: trio.CancelScope | None = None
        self.info_extras: list[Callable[[], dict[str, int]]] = []  # services' figures for `info`
        self._handlers: dict[str, RpcHandler] = {
            "ping": self._on_ping,
            "step": self._on_step,
            "notify": self._on_notify,
            "consider_successor": self._on_consider_successor,
            "successor_leaving": self._on_successor_leaving,
            "predecessor_leaving": self._on_predecessor_leaving,
            "info": self._on_info,
            "arc": self._on_arc,
            "lookup": self._on_lookup,
        }
        transport.set_handler(self.handle)

    def _own_id(self, transport: Transport, node_id: int | None) -> int:
        """The ID the transport's certificate gives, else the one asked for, else
        the hash of the address."""
        bound = transport.local_node_id
        if bound is not None:
            if node_id is not None and node_id != bound:
                raise ValueError(f"this node's certificate gives it ID {self.space.short(bound)}…; it cannot take another")
            return bound
        return self.space.node_id(transport.address) if node_id is None else self.space.check(node_id)

    def register(self, method: str, handler: RpcHandler) -> None:
        """Serve another RPC method (a service built on the ring, such as block
        storage); who may call it is `messages.ALLOWED[method]`."""
        if method in self._handlers or method not in messages.ALLOWED:
            raise ValueError(f"method {method} is already served or has no entry in messages.ALLOWED")
        self._handlers[method] = handler

    def __repr__(self) -> str:
        return f"<ChordNode {self.space.short(self.me.id)} at {self.me.address}>"

    # -- outgoing calls ------------------------------------------------------------

    async def call(self, node: NodeRef, method: str, *args: Any) -> Any:
        """Call the node `node` names, at its address and with its ID (a peer whose
        certificate gives another ID is refused: IdentityMismatch), asking again
        after a timeout (a lost message is not a dead node) up to `rpc_attempts`
        times; a refused connection is final. The reply is not yet checked: use
        `ask` where its shape matters."""
        return await self._call(node.address, node.id, method, list(args))

    async def ask(self, node: NodeRef, method: str, decode: Callable[[Any], T], *args: Any) -> T:
        """`call`, with the reply checked by `decode` (BadReply when it does not fit)."""
        return decode(await self.call(node, method, *args))

    async def _call(self, address: str, node_id: int | None, method: str, args: list[Any]) -> Any:
        timeout = self.config.rpc_timeout
        for _ in range(self.config.rpc_attempts - 1):
            try:
                return await self.transport.call(address, method, args, timeout=timeout, node_id=node_id)
            except CallTimeout:
                pass
        return await self.transport.call(address, method, args, timeout=timeout, node_id=node_id)

    async def ping_address(self, address: str) -> NodeRef:
        """Who answers at an address whose node we do not know yet (a bootstrap)."""
        return messages.ping_reply(await self._call(address, None, "ping", []), self.space)

    async def _notify(self, node: NodeRef) -> tuple[NodeRef | None, list[NodeRef]]:
        """Tell node we may be its predecessor; get back the predecessor it had before
        (the paper's successor.predecessor) and its successor list."""
        decode = lambda reply: messages.notify_reply(reply, self.space)  # noqa: E731
        return await self.ask(node, "notify", decode, self.me.to_wire())

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
                entry = await self.ping_address(bootstrap)
                return await self._iterate(self.me.id, entry, self.config.lookup_timeout, confirm=True)
            except (TransportError, LookupFailed) as exc:
                failure = exc
        raise failure

    async def _announce_to(self, predecessor: NodeRef | None) -> None:
        """Tell the node before us that we now follow it, so it need not wait for its
        next stabilize; it checks the claim against its own view first."""
        if predecessor is None or not in_open(self.me.id, predecessor.id, self.routing.successor.id):
            return
        try:
            adopted = await self.ask(predecessor, "consider_successor", self._flag, self.me.to_wire())
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
            nursery.start_soon(self.repeat, cfg.stabilize_interval, self.stabilize)
            nursery.start_soon(self.repeat, cfg.fix_fingers_interval, self.fix_fingers)
            nursery.start_soon(self.repeat, cfg.check_predecessor_interval, self.check_predecessor)
            task_status.started()

    def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()

    async def repeat(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` every `interval` seconds (with the node's jitter) until
        cancelled. A failure is logged and the next round goes on: nothing a peer
        sends ends a maintenance task."""
        spread = self.config.jitter
        while True:
            await trio.sleep(interval * self.rng.uniform(1 - spread, 1 + spread))
            try:
                await action()
            except (ChordError, ValueError) as exc:
                log.debug("%r: %s failed: %s", self, action.__name__, exc)
            except Exception:  # a bug, not a peer's doing: keep the node running and say so
                log.exception("%r: %s failed unexpectedly", self, action.__name__)

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
            self.departed.remember(node, trio.current_time())
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
        start = self.space.finger_start(self.me.id, index)
        result = await self._iterate(start, self.me, self.config.lookup_timeout)
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
                if await self.ask(answerer, "consider_successor", self._flag, self.me.to_wire()):
                    log.info("%r: %s was skipping us; it follows us now", self, answerer.address)
            except (TransportError, RemoteError):
                pass

    async def _departed_peer_back(self) -> NodeRef | None:
        """Probe the departed peer whose probe is most overdue; return it if it answers."""
        node = self.departed.next_to_probe(trio.current_time())
        if node is None:
            return None
        try:
            answer = await self._ping(node)
        except (TransportError, RemoteError):
            self.departed.probe_failed(node, trio.current_time())
            return None
        self.departed.discard(node.id)
        log.info("%r: departed peer %s answers again", self, node.address)
        return answer

    async def check_predecessor(self) -> None:
        predecessor = self.routing.predecessor
        if predecessor is None:
            return
        if not await self._answers_as(predecessor):
            if self.routing.predecessor == predecessor:
                self.routing.set_predecessor(None)
                self.departed.remember(predecessor, trio.current_time())
                log.info("%r: predecessor %s failed", self, predecessor.address)

    # -- lookups -------------------------------------------------------------------

    async def lookup(self, key: int, timeout: float | None = None) -> LookupResult:
        """Find successor(key), driving each hop from here and skipping dead hops;
        the owner confirms the answer (`dht.lookup.confirm_owner`)."""
        self.space.check(key)
        return await self._iterate(key, self.me, timeout or self.config.lookup_timeout, confirm=True)

    async def _iterate(
        self, key: int, origin: NodeRef, timeout: float, exclude: frozenset[int] = frozenset(), confirm: bool = False
    ) -> LookupResult:
        """Iterative routing (`dht.lookup`) from `origin`: this node, answered from
        its own table, or a bootstrap node. Hops that fail are dropped from routing.
        Only lookups for users and joins ask the owner to confirm (a node that
        joins in the wrong place breaks the ring); fingers, a lost successor and
        strong stabilization do without, since stabilization corrects what they get
        wrong, and after a mass failure the extra round trips to dead owners slowed
        healing past what the ring could afford (the 1,000-node half-crash stopped
        converging within 600 s)."""
        return await iterate(
            self.space, key, origin, self._step, timeout, exclude=exclude, local_address=self.me.address, on_dead=self._on_dead_hop,
            arc=self._arc if confirm else None,
        )

    def _on_dead_hop(self, hop: NodeRef, error: ChordError) -> None:
        if self._drop_unreachable(hop):
            log.debug("%r: dropped unresponsive %s: %s", self, hop.address, error)

    async def _step(self, hop: NodeRef, key: int, dead: frozenset[int]) -> tuple[bool, list[NodeRef]]:
        if hop.address == self.me.address:
            answer = self.routing.route(key, None, dead)
            return isinstance(answer, Owner), answer.nodes
        return await remote_step(self.call, self.space, hop, key, dead)

    async def _arc(self, node: NodeRef) -> tuple[NodeRef | None, list[NodeRef]]:
        if node.address == self.me.address:
            return self.routing.arc_start(), list(self.routing.successors)
        return messages.arc_reply(await self.call(node, "arc"), self.space)

    # -- serving -------------------------------------------------------------------

    def handle(self, caller: PeerIdentity, method: str, args: list[Any]) -> Any:
        """Answer one incoming call: the result itself, or an awaitable of it for
        calls that need the network (lookup). A call the caller's role may not
        make raises Forbidden; bad arguments raise BadRequest."""
        messages.check_allowed(caller, method)
        handler = self._handlers.get(method)
        if handler is None:
            raise BadRequest(f"{method} is not served here")
        return handler(caller, args)

    def _flag(self, reply: Any) -> bool:
        return messages.flag_reply(reply, "consider_successor")

    def _on_ping(self, caller: PeerIdentity, args: list[Any]) -> list[Any]:
        return self.me.to_wire()

    def _on_step(self, caller: PeerIdentity, args: list[Any]) -> list[Any]:
        key, dead = messages.step_args(args, self.space)
        answer = self.routing.route(key, self.config.candidates_per_step, dead)
        return ["owner" if isinstance(answer, Owner) else "next", refs_to_wire(answer.nodes)]

    def _on_notify(self, caller: PeerIdentity, args: list[Any]) -> list[Any]:
        (value,) = messages.arguments(args, 1, "notify")
        candidate = messages.self_arg(value, self.space, caller, "notify")
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

    def _on_consider_successor(self, caller: PeerIdentity, args: list[Any]) -> bool:
        (value,) = messages.arguments(args, 1, "consider_successor")
        candidate = messages.self_arg(value, self.space, caller, "consider_successor")
        routing = self.routing
        if candidate.id == self.me.id or not in_open(candidate.id, self.me.id, routing.successor.id):
            return False
        routing.set_successors(candidate, routing.successors)
        return True

    def _on_successor_leaving(self, caller: PeerIdentity, args: list[Any]) -> None:
        leaver_wire, successors_wire = messages.arguments(args, 2, "successor_leaving")
        leaver = messages.self_arg(leaver_wire, self.space, caller, "successor_leaving")
        its_successors = [n for n in messages.refs_arg(successors_wire, self.space, "successor_leaving") if n.id != self.me.id]
        was_successor = self.routing.successor.id == leaver.id
        self.routing.forget(leaver.id)
        self.departed.discard(leaver.id)
        if was_successor and its_successors:
            self.routing.set_successors(its_successors[0], its_successors[1:])

    def _on_predecessor_leaving(self, caller: PeerIdentity, args: list[Any]) -> Awaitable[None] | None:
        """Our predecessor leaves and names its own predecessor as ours. That node is
        adopted only once it answers at that address with that ID (the awaitable
        returned): a predecessor decides which keys we call our own, so a forged
        one must not get in."""
        leaver_wire, predecessor_wire = messages.arguments(args, 2, "predecessor_leaving")
        leaver = messages.self_arg(leaver_wire, self.space, caller, "predecessor_leaving")
        replacement = None if predecessor_wire is None else messages.node_arg(predecessor_wire, self.space, "predecessor_leaving")
        was_predecessor = self.routing.predecessor is not None and self.routing.predecessor.id == leaver.id
        self.routing.forget(leaver.id)
        self.departed.discard(leaver.id)
        if not was_predecessor:
            return None
        self.routing.set_predecessor(None)
        if replacement is None or replacement.id == self.me.id:
            return None
        return self._adopt_predecessor(replacement)

    async def _adopt_predecessor(self, candidate: NodeRef) -> None:
        if await self._answers_as(candidate) and self.routing.predecessor is None:  # nobody closer notified us meanwhile
            self.routing.set_predecessor(candidate)

    async def _answers_as(self, node: NodeRef) -> bool:
        try:
            return await self._ping(node) == node
        except (TransportError, RemoteError):
            return False

    async def _ping(self, node: NodeRef) -> NodeRef:
        """Who answers a ping at node's address (checked against node's ID)."""
        return await self.ask(node, "ping", lambda reply: messages.ping_reply(reply, self.space))

    def info(self) -> NodeInfo:
        """What `info` reports: this node's view of the ring and its services' figures."""
        routing = self.routing
        store: dict[str, int] = {}
        for extra in self.info_extras:
            store.update(extra())
        fingers = list({f.id: f for f in routing.fingers if f is not None}.values())
        return NodeInfo(self.me, self.space.bits, routing.predecessor, list(routing.successors), fingers, store)

    def _on_arc(self, caller: PeerIdentity, args: list[Any]) -> list[Any]:
        messages.arguments(args, 0, "arc")
        start = self.routing.arc_start()
        return [start.to_wire() if start else None, refs_to_wire(self.routing.successors)]

    def _on_info(self, caller: PeerIdentity, args: list[Any]) -> dict[str, Any]:
        return self.info().to_wire()

    async def _on_lookup(self, caller: PeerIdentity, args: list[Any]) -> dict[str, Any]:
        (key,) = messages.arguments(args, 1, "lookup")
        result = await self.lookup(messages.ring_id_arg(key, self.space, "lookup"))
        return result.to_wire()


async def remote_step(
    call: Callable[..., Awaitable[Any]], space: IdSpace, hop: NodeRef, key: int, dead: frozenset[int]
) -> tuple[bool, list[NodeRef]]:
    """One routing step asked of `hop` through `call(node, method, *args)`, its reply checked."""
    excluded = sorted(dead)[: messages.MAX_EXCLUDED]
    reply = await (call(hop, "step", key, excluded) if excluded else call(hop, "step", key))
    return messages.step_reply(reply, space)

