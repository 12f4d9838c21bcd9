"""The seam between the Chord node and the network.

A node calls methods on remote addresses through a `Transport` and answers calls
through a `Handler` it installs on it. Both the TCP transport and the simulated
network implement this; the node never knows which one it has.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

# A handler returns its result at once when it needs no I/O, or an awaitable of the
# result when it does; transports answer the first kind without starting a task.
Handler = Callable[[str, list[Any]], Any | Awaitable[Any]]


class Transport(Protocol):
    """One node's network endpoint."""

    @property
    def address(self) -> str:
        """The host:port (or simulated name) peers reach this endpoint at."""
        ...

    def set_handler(self, handler: Handler) -> None:
        """Install the coroutine that answers incoming calls."""
        ...

    async def call(self, address: str, method: str, args: list[Any], *, timeout: float) -> Any:
        """Call `method(*args)` on the node at address and return its result.

        Raises CallTimeout when the deadline passes, PeerUnreachable when the peer
        cannot be reached, ProtocolError on a broken reply, and RemoteError when
        the peer's handler raised.
        """
        ...


def remote_error_of(exc: BaseException) -> tuple[str, str]:
    """How a handler's exception is reported to the caller: [kind, message]."""
    return type(exc).__name__, str(exc)
