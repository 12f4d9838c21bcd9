"""Calls from one node to others: how long to wait, how often to ask again, and
what the answers teach about round-trip times.

Owns the policy for waiting on peers. A prompt call (`messages.PROMPT_METHODS`:
routing state, answered at once) waits for the peer's measured round-trip
timeout (`dht.rtt`), doubling on each retry as TCP's retransmission timer does;
any other call (moving blocks, a whole lookup) waits the fixed `rpc_timeout`.
A lost message is not a dead node, so a call is asked again up to `attempts`
times unless the caller, like a lookup that can route around a silent hop,
asks for fewer. A refused connection is final at once.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import trio

from . import messages
from .errors import CallTimeout
from .ids import IdSpace
from .routing import NodeRef
from .rtt import RoundTripTimes
from .transport import Transport

T = TypeVar("T")


class PeerCalls:
    """Outgoing calls of one node over `transport`."""

    def __init__(self, transport: Transport, space: IdSpace, rpc_timeout: float, min_rpc_timeout: float, attempts: int) -> None:
        self.transport, self.space = transport, space
        self.rpc_timeout, self.attempts = rpc_timeout, attempts
        self.round_trips = RoundTripTimes(floor=min(min_rpc_timeout, rpc_timeout), ceiling=rpc_timeout)

    async def call(self, node: NodeRef, method: str, *args: Any, attempts: int | None = None, patient: bool = False) -> Any:
        """Call the node `node` names, at its address and with its ID (a peer whose
        certificate gives another ID is refused: IdentityMismatch). `patient`
        waits the fixed timeout even for a prompt call, where taking a slow node
        for dead would cost more than waiting. The reply is not yet checked: use
        `ask` where its shape matters."""
        return await self._call(node.address, node.id, method, list(args), attempts or self.attempts, patient)

    async def ask(self, node: NodeRef, method: str, decode: Callable[[Any], T], *args: Any, attempts: int | None = None) -> T:
        """`call`, with the reply checked by `decode` (BadReply when it does not fit)."""
        return decode(await self.call(node, method, *args, attempts=attempts))

    async def ping_address(self, address: str) -> NodeRef:
        """Who answers at an address whose node we do not know yet (a bootstrap)."""
        return messages.ping_reply(await self._call(address, None, "ping", [], self.attempts), self.space)

    async def _call(self, address: str, node_id: int | None, method: str, args: list[Any], attempts: int, patient: bool = False) -> Any:
        measured = method in messages.PROMPT_METHODS  # a prompt reply times the round trip
        prompt = measured and not patient
        timeout = self.round_trips.timeout(address) if prompt else self.rpc_timeout
        for attempt in range(attempts):
            started = trio.current_time()
            try:
                reply = await self.transport.call(address, method, args, timeout=timeout, node_id=node_id)
            except CallTimeout:
                if attempt == attempts - 1:
                    raise
                timeout = min(2 * timeout, self.rpc_timeout) if prompt else timeout
                continue
            if measured:
                self.round_trips.observe(address, trio.current_time() - started)
            return reply
        raise AssertionError("unreachable: the last attempt returns or raises")
