"""The typed exceptions of the dht package, shared by node, transports and tools."""

from __future__ import annotations


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
    """No live route to the key's owner was found before the deadline."""
