"""chordcdn's storage layer: the Chord ring, its transports and its simulator.

`ChordNode` is the protocol; `open_tcp_transport` and `SimNetwork` are the two
networks it runs on; `SimCluster` runs many nodes in virtual time for tests and
the churn simulator. `ids`, `routing` and `wire` are pure logic with no I/O.
"""

from .errors import (
    BadRequest,
    CallTimeout,
    ChordError,
    FrameTooLarge,
    LookupFailed,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
    TransportError,
)
from .ids import IdSpace, in_half_open, in_open
from .messages import LookupResult
from .node import ChordNode, NodeConfig
from .routing import NodeRef, RoutingTable
from .simnet import SimNetwork
from .tcp import open_tcp_transport

__all__ = [
    "BadRequest", "CallTimeout", "ChordError", "ChordNode", "FrameTooLarge", "IdSpace", "LookupFailed",
    "LookupResult", "NodeConfig", "NodeRef", "PeerUnreachable", "ProtocolError", "RemoteError", "RoutingTable",
    "SimNetwork", "TransportError", "in_half_open", "in_open", "open_tcp_transport",
]
