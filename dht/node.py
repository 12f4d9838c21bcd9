"""The Chord node: join (carried out by `dht.joining`), iterative lookups, graceful
leave, and the RPC surface peers call.

Owns one node's identity, routing state and answers. Routing decisions come from
`dht.routing`; periodic repair (stabilize, fix_fingers, check_predecessor) and its
pace from `dht.maintenance`; how long to wait for a peer from `dht.peercalls`; the
network is whatever `Transport` it is given; time is read only through trio. The
same code therefore runs over TCP and on the simulated network. A ChordNode is one
ring position: a process with virtual nodes runs several (`dht.vnodes`).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import trio

from . import messages
from .errors import BadReply, BadRequest, ChordError, LookupFailed, RemoteError, RoutingLoop, TransportError
from .identity import PeerIdentity
from .ids import DEFAULT_BITS, IdSpace, in_open
from .joining import join_ring
from .lookup import DEFAULT_SIZE_GUESS, hop_limit, iterate
from .messages import LookupResult, NodeInfo
from .maintenance import Maintenance
from .peercalls import PeerCalls
from .recursive import RecursiveLookups
from .routing import DepartedPeers, NodeRef, Owner, RoutingTable, refs_to_wire
from .transport import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")
LISTS_REMEMBERED = 16  # successor lists kept to name by digest in the next notify (a successor, walk-back steps)
LOOKUP_MODES = ("iterative", "recursive")
RECURSIVE_SHARE = 0.5  # of a lookup's time, spent on a recursive try before an iterative one
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
    rpc_timeout: float = 1.0  # the longest wait for a peer's answer (`dht.peercalls`)
    min_rpc_timeout: float = 0.2  # the shortest, however fast a peer answered before
    min_stabilize_interval: float = 0.0  # below stabilize_interval: adapt to churn down to this (`dht.pace`)
    rpc_attempts: int = 2
    lookup_timeout: float = 10.0
    candidates_per_step: int = 3
    lookup_mode: str = "iterative"  # or "recursive" (`dht.recursive`), falling back to iterative
    proximity_fingers: bool = True  # each finger the nearest of the nodes that may fill it

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
        for name in ("stabilize_interval", "fix_fingers_interval", "check_predecessor_interval", "rpc_timeout", "min_rpc_timeout", "lookup_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.min_stabilize_interval <= self.stabilize_interval:
            raise ValueError("min_stabilize_interval must lie between 0 (fixed intervals) and stabilize_interval")
        if self.rpc_attempts < 1:
            raise ValueError("rpc_attempts must be at least 1")
        if self.lookup_mode not in LOOKUP_MODES:
            raise ValueError(f"lookup_mode must be one of {', '.join(LOOKUP_MODES)}")
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
        lender: "ChordNode | None" = None,
    ) -> None:
        """`lender`: the first position of this process, when this is a virtual
        node: it fixes this one's fingers in turn with its own and lends its
        fingers meanwhile (`dht.maintenance`)."""
        self.config = config
        self.space = IdSpace(config.bits)
        self.transport = transport
        ident = self._own_id(transport, node_id)
        self.me = NodeRef(ident, transport.address)
        self.routing = RoutingTable(self.me, self.space, config.successor_list_size, lender.routing if lender else None)
        self.maintenance = Maintenance(self)
        if lender is not None:
            lender.maintenance.borrowers.append(self)
        self._predecessor_check: trio.Event | None = None  # set when a notify from behind has checked it
        self.predecessor_heard = -math.inf  # when our predecessor last notified us (trio time)
        self.leaving = False  # set by `leave`: no notify goes out any more
        self._lists_heard: dict[int, tuple[list[NodeRef], bytes]] = {}  # successor lists notify got back, and their digests
        self._own_digest: tuple[list[NodeRef], bytes] | None = None  # our successor list's digest, while the list stands
        self.peers = PeerCalls(transport, self.space, config.rpc_timeout, config.min_rpc_timeout, config.rpc_attempts)
        self.departed = DepartedPeers()
        self.rng = rng or random.Random(ident)
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
        self.recursive = RecursiveLookups(self)  # serves forward and found
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
        """Call a peer, waiting and retrying as `dht.peercalls` decides; a peer whose
        certificate gives another ID than node's is refused (IdentityMismatch)."""
        return await self.peers.call(node, method, *args)

    async def ask(self, node: NodeRef, method: str, decode: Callable[[Any], T], *args: Any) -> T:
        """`call`, with the reply checked by `decode` (BadReply when it does not fit)."""
        return await self.peers.ask(node, method, decode, *args)

    async def notify_peer(self, node: NodeRef) -> tuple[NodeRef | None, list[NodeRef]]:
        """Tell node we may be its predecessor; get back the predecessor it had before
        (the paper's successor.predecessor) and its successor list."""
        if self.leaving:
            raise ChordError("this node is leaving the ring: it notifies nobody")
        cached = self._lists_heard.get(node.id)
        args = [self.me.to_wire()] + ([cached[1]] if cached is not None else [])
        decode = lambda reply: messages.notify_reply(reply, self.space)  # noqa: E731
        predecessor, its_successors = await self.ask(node, "notify", decode, *args)
        if its_successors is None:  # unchanged since the list we named
            if cached is None:
                raise BadReply("notify: an unchanged successor list was claimed, but none was named")
            return predecessor, cached[0]
        if len(self._lists_heard) >= LISTS_REMEMBERED:
            self._lists_heard.clear()
        self._lists_heard[node.id] = (its_successors, messages.list_digest(its_successors))
        return predecessor, its_successors

    # -- joining and leaving -----------------------------------------------------

    async def join(self, bootstrap: str | None) -> None:
        """Join the ring through any node at `bootstrap`, or start a new ring when None
        (`dht.joining`)."""
        await join_ring(self, bootstrap)

    async def leave(self) -> None:
        """Leave gracefully: hand predecessor and successor to each other, then stop.
        Maintenance is stopped only after the notices: cancelling a task in the
        middle of a send drops the link it shares with the notices, which then
        fail. Until then no notify leaves (`notify_peer`), so none can follow a
        notice and undo it."""
        self.leaving = True
        predecessor, successors = self.routing.predecessor, list(self.routing.successors)
        pred_wire = predecessor.to_wire() if predecessor else None
        try:
            if successors:
                await self._try(successors[0], "predecessor_leaving", self.me.to_wire(), pred_wire)
            if predecessor is not None and predecessor.id != self.me.id:
                await self._try(predecessor, "successor_leaving", self.me.to_wire(), refs_to_wire(successors))
        finally:
            self.stop()
        log.info("%r left the ring", self)

    async def _try(self, node: NodeRef, method: str, *args: Any) -> None:
        try:
            await self.call(node, method, *args)
        except (TransportError, RemoteError) as exc:
            log.warning("%r: %s to %s failed: %s", self, method, node.address, exc)

    # -- maintenance (dht.maintenance) --------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the routing state right (`dht.maintenance`) until `stop` or cancellation."""
        await self.maintenance.run(task_status=task_status)

    def stop(self) -> None:
        self.maintenance.stop()

    async def repeat(self, interval: float, action: Callable[[], Awaitable[None]], purpose: str = "maintenance") -> None:
        """Run `action` every `interval` seconds at the pace of maintenance (see
        `Maintenance.repeat`), its traffic counted as `purpose`."""
        await self.maintenance.repeat(interval, action, purpose)

    def drop_unreachable(self, node: NodeRef) -> bool:
        """Forget a peer that did not answer, but remember it for later probes;
        return whether it was known."""
        known = self.routing.forget(node.id)
        if known:
            self.departed.remember(node, trio.current_time())
        return known

    # -- lookups -------------------------------------------------------------------

    async def lookup(self, key: int, timeout: float | None = None) -> LookupResult:
        """Find successor(key), driving each hop from here and skipping dead hops;
        the owner confirms the answer (`dht.lookup.confirm_owner`). A lookup that
        passes the hop limit starts again from a random known node, once. In
        recursive mode the query is first passed from hop to hop (`dht.recursive`)
        for part of the time, and driven from here only if that fails."""
        self.space.check(key)
        deadline = trio.current_time() + (timeout or self.config.lookup_timeout)
        if self.config.lookup_mode == "recursive":
            try:
                return await self.recursive.lookup(key, RECURSIVE_SHARE * (deadline - trio.current_time()))
            except LookupFailed as failed:
                log.debug("%r: %s; looking up iteratively", self, failed)
        try:
            return await self.search(key, self.me, deadline - trio.current_time(), confirm=True)
        except RoutingLoop as loop:
            others = self.routing.known_nodes()
            if not others:
                raise
            log.debug("%r: %s; starting again elsewhere", self, loop)
            return await self.search(key, self.rng.choice(others), deadline - trio.current_time(), confirm=True)

    async def search(
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
            arc=self.arc_of if confirm else None, max_steps=hop_limit(self._size_guess()),
        )

    def _size_guess(self) -> int:
        """The ring size a lookup's hop limit assumes: our estimate, or, while we know
        no successor (joining), a generous guess rather than a ring of one."""
        return self.routing.estimated_size() if self.routing.successors else DEFAULT_SIZE_GUESS

    def _on_dead_hop(self, hop: NodeRef, error: ChordError) -> None:
        if self.drop_unreachable(hop):
            log.debug("%r: dropped unresponsive %s: %s", self, hop.address, error)

    async def _step(self, hop: NodeRef, key: int, dead: frozenset[int]) -> tuple[bool, list[NodeRef]]:
        if hop.address == self.me.address:
            answer = self.routing.route(key, None, dead)
            return isinstance(answer, Owner), answer.nodes
        return await remote_step(self._call_once, self.space, hop, key, dead)

    async def arc_of(self, node: NodeRef, patient: bool = False) -> tuple[NodeRef | None, list[NodeRef]]:
        """The arc `node` believes it owns: (its predecessor, its successors);
        `patient` waits the fixed timeout rather than the measured one."""
        if node.address == self.me.address:
            return self.routing.arc_start(), list(self.routing.successors)
        return messages.arc_reply(await self.peers.call(node, "arc", patient=patient), self.space)

    async def _call_once(self, node: NodeRef, method: str, *args: Any) -> Any:
        """A lookup's call: one attempt, since a lookup routes around a silent hop."""
        return await self.peers.call(node, method, *args, attempts=1)

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

    def _on_ping(self, caller: PeerIdentity, args: list[Any]) -> list[Any]:
        return self.me.to_wire()

    def _on_step(self, caller: PeerIdentity, args: list[Any]) -> list[Any]:
        key, dead = messages.step_args(args, self.space)
        answer = self.routing.route(key, self.config.candidates_per_step, dead)
        return ["owner" if isinstance(answer, Owner) else "next", refs_to_wire(answer.nodes)]

    def _on_notify(self, caller: PeerIdentity, args: list[Any]) -> list[Any] | Awaitable[list[Any]]:
        """A node says it may be our predecessor. Adopt it when it is closer than
        the one we have. When it lies before ours, it does not know ours: either it
        is behind the times or ours is dead, and only a ping tells which (the
        reply waits for it, so a node that joins behind a dead predecessor is
        adopted before its join returns, not one check_predecessor later)."""
        candidate, digest = messages.notify_args(args, self.space, caller)
        routing = self.routing
        predecessor = routing.predecessor
        # A node that knows no other (a new ring's founder, or the last one left)
        # takes the notifier as its successor too; one that merely lost its
        # successors must not, or it closes a small loop beside the ring.
        lonely = not routing.successors and not routing.known_nodes() and not routing.cut_off
        if candidate.id != self.me.id:
            if predecessor is not None and candidate.id == predecessor.id:
                self.predecessor_heard = trio.current_time()
            if predecessor is None or in_open(candidate.id, predecessor.id, self.me.id):
                routing.set_predecessor(candidate)
                log.info("%r: predecessor is now %s", self, candidate.address)
            elif candidate.id != predecessor.id:
                return self._notified_behind(candidate, predecessor)
            if lonely:
                routing.set_successors(candidate, [])
        return self._notify_reply(predecessor, digest)

    async def _notified_behind(self, candidate: NodeRef, predecessor: NodeRef) -> list[Any]:
        """Check the predecessor (one check at a time, in the node's own tasks, so
        that it finishes even if the notifier stops waiting), then reply."""
        checked = self._predecessor_check
        if checked is None:
            checked = self._predecessor_check = trio.Event()
            if not self.maintenance.start_soon(self._check_behind, candidate, predecessor, checked):
                await self._check_behind(candidate, predecessor, checked)
        await checked.wait()
        current = self.routing.predecessor
        return self._notify_reply(None if current is not None and current.id == candidate.id else current)

    async def _check_behind(self, candidate: NodeRef, predecessor: NodeRef, checked: trio.Event) -> None:
        try:
            await self.replace_if_dead(predecessor, candidate)
        finally:
            self._predecessor_check = None
            checked.set()

    async def replace_if_dead(self, predecessor: NodeRef, replacement: NodeRef | None) -> None:
        """Ping our predecessor; if it does not answer and is still our
        predecessor, remember it as departed and take `replacement` instead."""
        if await self.answers_as(predecessor) or self.routing.predecessor != predecessor:
            return
        self.departed.remember(predecessor, trio.current_time())
        self.routing.set_predecessor(replacement)
        log.info("%r: predecessor %s failed%s", self, predecessor.address, f"; {replacement.address} follows it" if replacement else "")

    def _notify_reply(self, predecessor: NodeRef | None, digest: bytes | None = None) -> list[Any]:
        """[predecessor, successor list], the list as None when it is the one `digest` names."""
        successors = self.routing.successors
        unchanged = digest is not None and digest == self._successors_digest(successors)
        return [predecessor.to_wire() if predecessor else None, None if unchanged else refs_to_wire(successors)]

    def _successors_digest(self, successors: list[NodeRef]) -> bytes:
        """`messages.list_digest` of our list, computed once per list (a changed
        list is always a new list object)."""
        if self._own_digest is None or self._own_digest[0] is not successors:
            self._own_digest = (successors, messages.list_digest(successors))
        return self._own_digest[1]

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
        self.routing.forget(leaver.id, gracefully=True)
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
        self.routing.forget(leaver.id, gracefully=True)
        self.departed.discard(leaver.id)
        if not was_predecessor:
            return None
        self.routing.set_predecessor(None)
        if replacement is None or replacement.id == self.me.id:
            return None
        return self._adopt_predecessor(replacement)

    async def _adopt_predecessor(self, candidate: NodeRef) -> None:
        if await self.answers_as(candidate) and self.routing.predecessor is None:  # nobody closer notified us meanwhile
            self.routing.set_predecessor(candidate)

    async def answers_as(self, node: NodeRef) -> bool:
        try:
            return await self.ping(node) == node
        except (TransportError, RemoteError):
            return False

    async def ping(self, node: NodeRef) -> NodeRef:
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

