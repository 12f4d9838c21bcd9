"""The typed exceptions of the dht package, shared by node, transports and tools,
and `describe`, which puts untrusted values into their messages safely."""

from __future__ import annotations

from typing import Any


def describe(value: Any, limit: int = 40) -> str:
    """A short, safe description of an untrusted value for error messages.

    Never calls repr on containers (which recurses, and fails on deep nesting) nor
    on huge integers (which Python refuses to print): integers wider than 64 bits
    are described by their size, strings and bytes are cut to `limit`."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"a map of {len(value)}"
    return f"a {type(value).__name__}"


class ChordError(Exception):
    """Base class for every error this package raises on purpose."""


class TransportError(ChordError):
    """A call did not complete: the peer is unreachable, too slow, or broke the protocol."""


class PeerUnreachable(TransportError):
    """The peer refused the connection, is crashed, or dropped it mid-call."""


class CallTimeout(TransportError):
    """The call's deadline passed before a reply arrived."""


class ProtocolError(TransportError):
    """Bytes on the wire were not a valid frame or message."""


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the cap."""


class RemoteError(ChordError):
    """The peer answered with an error; `kind` names the remote exception type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class BadRequest(ChordError):
    """A request's method is unknown or its arguments have the wrong shape."""


class LookupFailed(ChordError):
    """No live route to the key's owner was found before the deadline. `answered`
    lists the nodes that did answer on the way, if any."""

    def __init__(self, message: str, answered: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.answered = answered


class RoutingLoop(LookupFailed):
    """A lookup took more steps than a route in a ring of this size can need."""


class BadReply(ProtocolError):
    """A peer's reply had the wrong shape: a broken or lying peer, never a crash."""


class IdentityMismatch(TransportError):
    """The peer at an address is not the node a reference named: its certificate
    gives another ID, or it is not a ring node at all."""


class Forbidden(BadRequest):
    """The caller's certificate role may not make this call."""


class NodeFull(ChordError):
    """The node's store is at its capacity and refuses new blocks."""


class CertificateError(ChordError):
    """A certificate or key could not be loaded, or does not fit the cluster."""
