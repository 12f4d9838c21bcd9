"""Keeping one node's routing state right over time, and how often.

Owns Chord's periodic repair for a `ChordNode`: stabilize (with the caller's half
of notify), fix_fingers, check_predecessor, and strong stabilization with probes of
departed peers, each repeated on its own timer; and the pace of those timers
(`dht.pace`), which speeds up while the node's neighbours churn. A virtual node
keeps its own fingers, but a process runs one fix_fingers timer for all of its
positions, taking them in turn, so its finger lookups do not grow with their
number; until its own are filled, a virtual node also routes with the first
one's. The node's
services (block repair) repeat through `repeat` too, at their own interval. The RPC
handlers that answer these calls stay with the node.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from . import messages
from .errors import CallTimeout, ChordError, LookupFailed, RemoteError, TransportError
from .ids import in_open
from .pace import ChurnPace
from .routing import NodeRef

if TYPE_CHECKING:
    from .node import ChordNode

log = logging.getLogger(__name__)

MAX_STABILIZE_WALK = 32
PROXIMITY_CANDIDATES = 8  # nodes of a finger's interval compared by round trip


class Maintenance:
    """The periodic tasks of one node."""

    def __init__(self, node: "ChordNode") -> None:
        self.node = node
        config = node.config
        self.pace = ChurnPace(config.stabilize_interval, config.min_stabilize_interval or config.stabilize_interval)
        self._next_finger = 0
        self.borrowers: list["ChordNode"] = []  # this process's other virtual nodes, whose fingers we fix in turn
        self._turn = 0
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    def start_soon(self, action: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run `action` as one of the node's own tasks, so that no caller's
        deadline cuts it short; False (and nothing started) while the node is
        not running."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(action, *args)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run stabilize, fix_fingers and check_predecessor until `stop` or cancellation."""
        cfg = self.node.config
        async with trio.open_nursery() as nursery:
            self._scope, self._nursery = nursery.cancel_scope, nursery
            nursery.start_soon(self.repeat, cfg.stabilize_interval, self.stabilize)
            if self.node.routing.lender is None:  # a virtual node's fingers are fixed in its lender's turn
                nursery.start_soon(self.repeat, cfg.fix_fingers_interval, self.fix_fingers_in_turn)
            nursery.start_soon(self.repeat, cfg.check_predecessor_interval, self.check_predecessor)
            task_status.started()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def repeat(self, interval: float, action: Callable[[], Awaitable[None]], purpose: str = "maintenance") -> None:
        """Run `action` every `interval` seconds, spread by the node's jitter, until
        cancelled; its traffic is counted as `purpose` (`messages.purpose`). Routing
        maintenance keeps the pace of churn (`dht.pace`); anything else (block
        repair, whose every round compares digests with several peers) keeps its
        own interval: paced, it cost 1.6 kB/s/node in a 5-minute churn run. A failure
        is logged and the next round goes on: nothing a peer sends ends a
        maintenance task."""
        with messages.purpose(purpose):
            await self._repeat(interval, action, paced=purpose == "maintenance")

    async def _repeat(self, interval: float, action: Callable[[], Awaitable[None]], paced: bool) -> None:
        spread = self.node.config.jitter
        while True:
            scale = self.pace.scale(trio.current_time()) if paced else 1.0
            await trio.sleep(interval * scale * self.node.rng.uniform(1 - spread, 1 + spread))
            try:
                await action()
            except (ChordError, ValueError) as exc:
                log.debug("%r: %s failed: %s", self.node, action.__name__, exc)
            except Exception:  # a bug, not a peer's doing: keep the node running and say so
                log.exception("%r: %s failed unexpectedly", self.node, action.__name__)

    def _observe_neighbours(self) -> None:
        routing = self.node.routing
        predecessor = routing.predecessor.id if routing.predecessor is not None else None
        self.pace.observe((routing.successor.id, predecessor), trio.current_time())

    async def stabilize(self) -> None:
        """Verify our successor, adopt a closer one if it has appeared, and notify
        it; then note the neighbours for the pace.

        A burst of joins can put many nodes between us and our successor; rather than
        moving back one node per round, follow successor.predecessor while it is
        closer, up to `MAX_STABILIZE_WALK` nodes in one round."""
        try:
            await self._stabilize()
        finally:
            self._observe_neighbours()

    async def _stabilize(self) -> None:
        routing = self.node.routing
        while routing.successors:
            successor = routing.successor
            try:
                between, its_successors = await self.node.notify_peer(successor)
            except CallTimeout:
                # A notify from behind waits while its receiver checks a predecessor
                # that may be dead; that is slow, not dead. Only a node that does
                # not answer a ping either is dropped.
                if routing.successor == successor and not await self.node.answers_as(successor):
                    self.node.drop_unreachable(successor)
                    log.info("%r: successor %s unreachable; next is %s", self.node, successor.address, routing.successor.address)
                    continue
                return
            except (TransportError, RemoteError):
                if routing.successor == successor:
                    self.node.drop_unreachable(successor)
                    log.info("%r: successor %s unreachable; next is %s", self.node, successor.address, routing.successor.address)
                continue
            if routing.successor != successor:
                return  # changed while we waited (a leave notice, a closer joiner): next round
            routing.set_successors(successor, its_successors)
            await self.walk_back(between)
            return
        if routing.known_nodes() and not await self._rejoin():  # lost every successor, but not the ring
            await self._follow_closest_known()

    async def walk_back(self, between: NodeRef | None) -> None:
        """Adopt `between` (a successor's predecessor) as successor while it lies
        between us and our successor, following its own predecessor on."""
        for _ in range(MAX_STABILIZE_WALK):
            successor = self.node.routing.successor
            if between is None or not in_open(between.id, self.node.me.id, successor.id):
                return
            try:
                closer_between, closer_successors = await self.node.notify_peer(between)
            except (TransportError, RemoteError):
                return
            if self.node.routing.successor != successor:
                return
            self.node.routing.set_successors(between, closer_successors)
            between = closer_between

    async def _rejoin(self) -> bool:
        """Every successor failed: find the node after us again, starting from any
        other node we still know; return whether one was found. (Adopting our
        predecessor as successor, as a lone node does, would close a small loop
        of its own beside the ring.)"""
        after_me = (self.node.me.id + 1) % self.node.space.size
        for node in self.node.routing.known_nodes():
            try:
                result = await self.node.search(after_me, node, self.node.config.lookup_timeout, frozenset([self.node.me.id]))
            except ChordError:  # a hop that failed is dropped by the search itself; this node may be fine
                continue
            if result.owner.id != self.node.me.id:
                self.node.routing.set_successors(result.owner, result.successors[1:])
                log.info("%r: lost every successor; found %s again", self.node, result.owner.address)
                return True
        return False

    async def _follow_closest_known(self) -> None:
        """No lookup finds the node after us: the nodes after us are known only to
        themselves (a run of failures longer than the successor lists cut the
        ring). Tell the nearest node before us that answers that we follow it
        (strong stabilization), and take the nearest known node after us, not
        our predecessor, as successor: stabilize then tells it of us."""
        await self.check_not_skipped()
        routing, me = self.node.routing, self.node.me
        predecessor = routing.predecessor.id if routing.predecessor is not None else None
        after = [node for node in routing.known_nodes() if node.id != predecessor]
        if after and not routing.successors:
            nearest = min(after, key=lambda node: self.node.space.distance(me.id, node.id))
            routing.set_successors(nearest, [])
            log.info("%r: the ring is cut after us; trying %s as successor", self.node, nearest.address)

    async def fix_fingers_in_turn(self) -> None:
        """One fix_fingers step, for this node or, in turn, one of its process's
        virtual nodes: a process pays for one finger lookup per interval however
        many positions it holds, and each position's table refreshes that many
        times more slowly."""
        turn = [self.node, *self.borrowers]
        position = turn[self._turn % len(turn)]
        self._turn = (self._turn + 1) % len(turn)
        await position.maintenance.fix_fingers()

    async def fix_fingers(self) -> None:
        """Refresh the next finger, and every later finger the same node answers
        (a finger whose interval holds nodes takes the nearest of them, `_nearest`);
        once per round of the table, check that no part of the ring skips us. A
        finger whose lookup fails is passed over till the next round, and the
        check runs at once: the ring may be cut, and a finger that keeps failing
        must not hold up the check that mends it."""
        index = self._next_finger
        start = self.node.space.finger_start(self.node.me.id, index)
        try:
            result = await self.node.search(start, self.node.me, self.node.config.lookup_timeout)
        except LookupFailed:
            self._next_finger = (index + 1) % self.node.space.bits
            await self.check_not_skipped()
            raise
        routing = self.node.routing
        next_finger = routing.fill_fingers(index, result.owner)
        if self.node.config.proximity_fingers and routing.finger_index(result.owner.id) == index:
            routing.set_finger(index, await self._nearest([n for n in result.successors if routing.finger_index(n.id) == index]))
        self._next_finger = next_finger
        if next_finger == 0:
            await self.check_not_skipped()

    async def _nearest(self, candidates: list[NodeRef]) -> NodeRef:
        """Proximity neighbour selection (Gummadi et al.; Dabek et al.): of the
        first PROXIMITY_CANDIDATES nodes in a finger's interval, the one with the
        lowest measured round trip. Those never measured are pinged first, all at
        once; one that does not answer is passed over."""
        candidates = candidates[:PROXIMITY_CANDIDATES]
        round_trips = self.node.peers.round_trips
        unmeasured = [node for node in candidates if round_trips.smoothed(node.address) is None]
        if unmeasured:
            async with trio.open_nursery() as nursery:
                for node in unmeasured:
                    nursery.start_soon(self.node.answers_as, node)
        measured = [(rtt, index) for index, node in enumerate(candidates) if (rtt := round_trips.smoothed(node.address)) is not None]
        return candidates[min(measured)[1]] if measured else candidates[0]

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
            others = self.node.routing.known_nodes()  # never includes us
            if not others:
                return
            start = self.node.rng.choice(others)
        me = self.node.me
        try:
            result = await self.node.search(me.id, start, self.node.config.lookup_timeout, frozenset([me.id]))
        except LookupFailed as failed:  # a node before us answered but knows nothing past itself: it lost us
            answered = [node for node in failed.answered if node.id != me.id]
            if answered:
                await self._offer_to_follow(min(answered, key=lambda node: self.node.space.distance(node.id, me.id)))
            return
        if not result.path:
            return
        if in_open(me.id, result.path[-1].id, result.owner.id):
            await self._offer_to_follow(result.path[-1])

    async def _offer_to_follow(self, answerer: NodeRef) -> None:
        """Tell a node that skips us (or knows no successor) that we follow it."""
        predecessor = self.node.routing.predecessor
        if predecessor is None or answerer.id != predecessor.id:
            try:
                if await self.node.ask(answerer, "consider_successor", messages.adopted_reply, self.node.me.to_wire()):
                    log.info("%r: %s was skipping us; it follows us now", self.node, answerer.address)
            except (TransportError, RemoteError):
                pass

    async def _departed_peer_back(self) -> NodeRef | None:
        """Probe the departed peer whose probe is most overdue; return it if it answers."""
        node = self.node.departed.next_to_probe(trio.current_time())
        if node is None:
            return None
        try:
            answer = await self.node.ping(node)
        except (TransportError, RemoteError):
            self.node.departed.probe_failed(node, trio.current_time())
            return None
        self.node.departed.discard(node.id)
        log.info("%r: departed peer %s answers again", self.node, node.address)
        return answer

    async def check_predecessor(self) -> None:
        """Forget a predecessor that does not answer (it is remembered as departed)."""
        try:
            await self._check_predecessor()
        finally:
            self._observe_neighbours()

    async def _check_predecessor(self) -> None:
        node = self.node
        predecessor = node.routing.predecessor
        if predecessor is None:
            return
        if node.routing.lender is not None and trio.current_time() - node.predecessor_heard < node.config.check_predecessor_interval:
            return  # a virtual node's predecessor that notified it this interval is alive: no ping
        await node.replace_if_dead(predecessor, None)

