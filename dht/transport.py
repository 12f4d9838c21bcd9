"""The seam between the Chord node and the network.

A node calls methods on remote addresses through a `Transport` and answers calls
through a `Handler` it installs on it. Both the TCP transport (plain or mutual
TLS) and the simulated network implement this; the node never knows which one it
has. A transport tells the handler who called (`PeerIdentity`), and refuses a call
to a node ID that the peer at that address cannot prove.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from .errors import describe
from .identity import PeerIdentity

# A handler returns its result at once when it needs no I/O, or an awaitable of the
# result when it does; transports answer the first kind without starting a task.
Handler = Callable[[PeerIdentity, str, list[Any]], Any | Awaitable[Any]]


class Transport(Protocol):
    """One node's network endpoint."""

    @property
    def address(self) -> str:
        """The host:port (or simulated name) peers reach this endpoint at."""
        ...

    @property
    def local_node_id(self) -> int | None:
        """The ring ID this endpoint's certificate gives it; None when unbound."""
        ...

    def set_handler(self, handler: Handler) -> None:
        """Install the coroutine that answers incoming calls."""
        ...

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float, node_id: int | None = None) -> Any:
        """Call `method(*args)` on the node at address and return its result.

        With `node_id`, the peer must prove that ID (its certificate gives it) or
        the call fails with IdentityMismatch. Raises CallTimeout when the deadline
        passes, PeerUnreachable when the peer cannot be reached, ProtocolError on a
        broken reply, and RemoteError when the peer's handler raised.
        """
        ...


def remote_error_of(exc: BaseException) -> tuple[str, str]:
    """How a handler's exception is reported to the caller: [kind, message]."""
    try:
        message = str(exc)
    except ValueError:  # an integer too long to print, say
        message = describe(exc.args[0]) if exc.args else ""
    return type(exc).__name__, message
