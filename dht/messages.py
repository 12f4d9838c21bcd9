"""The RPC surface as data: which methods exist, who may call each, and the checked
decoding of every argument and every reply.

Owns the shapes of messages, so that nothing a peer sends reaches protocol logic
unchecked. Argument decoders raise `BadRequest` (the caller gets an error reply);
reply decoders raise `BadReply`, a `TransportError`, so a lying or broken peer is
handled like one that does not answer. Messages about bad values go through
`describe`, never `repr`. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from .errors import BadReply, BadRequest, Forbidden, describe
from .identity import PeerIdentity, Role, gives_position
from .ids import IdSpace, in_half_open
from .merkle import HASH_SIZE
from .routing import MAX_REFS, NodeRef, refs_from_wire, refs_to_wire
from .wire import pack

T = TypeVar("T")

MAX_EXCLUDED = 16  # dead node IDs a step may name
MAX_LISTED_KEYS = 4096  # keys in one list_keys reply
MAX_PROVE = 64  # keys in one prove_blocks call (each proof reads a block)
MAX_SYNC_PARTS = 256
MAX_HOPS = 128  # hops a recursive lookup may take, and nodes on its path
NONCE_SIZES = range(16, 65)

EVERYONE = frozenset(Role)
WRITERS = frozenset({Role.NODE, Role.CLIENT})
NODES = frozenset({Role.NODE})

# Who may call what. Readers (edges) route and get; clients also put, and challenge
# holders for proofs of possession (an origin auditing what it published); only
# ring nodes may change routing state or move copies between nodes.
ALLOWED: dict[str, frozenset[Role]] = {
    "ping": EVERYONE,
    "info": EVERYONE,
    "step": EVERYONE,
    "arc": EVERYONE,
    "lookup": EVERYONE,
    "forward": NODES,
    "found": NODES,
    "get_block": EVERYONE,
    "put_block": WRITERS,
    "notify": NODES,
    "consider_successor": NODES,
    "successor_leaving": NODES,
    "predecessor_leaving": NODES,
    "prove_blocks": WRITERS,
    "digests": NODES,
    "list_keys": NODES,
}


# Calls answered at once from routing state, small both ways: a caller waits for
# them by the peer's measured round-trip time (`dht.rtt`), not a fixed deadline.
PROMPT_METHODS = frozenset({"ping", "info", "step", "arc", "notify", "consider_successor", "successor_leaving", "forward", "found"})

# What each call's traffic is for, as the simulator reports bytes: routing
# maintenance, lookups, and moving or checking data. A task whose calls serve
# another purpose than their method's usual one says so with `purpose`: a node's
# finger and join lookups are maintenance, and repair's lookups are data.
TRAFFIC_KIND: dict[str, str] = {
    "ping": "maintenance", "info": "maintenance", "notify": "maintenance", "consider_successor": "maintenance",
    "successor_leaving": "maintenance", "predecessor_leaving": "maintenance",
    "step": "lookup", "arc": "lookup", "lookup": "lookup", "forward": "lookup", "found": "lookup",
    "get_block": "data", "put_block": "data", "prove_blocks": "data", "digests": "data", "list_keys": "data",
}
_purpose: ContextVar[str | None] = ContextVar("traffic_purpose", default=None)


@contextmanager
def purpose(kind: str) -> Iterator[None]:
    """Count the calls made inside (by this task and tasks it starts) as `kind`."""
    token = _purpose.set(kind)
    try:
        yield
    finally:
        _purpose.reset(token)


def traffic_kind(method: str) -> str:
    return _purpose.get() or TRAFFIC_KIND.get(method, "other")


def check_allowed(caller: PeerIdentity, method: str) -> None:
    """Raise Forbidden unless the caller's role may call `method`; BadRequest
    for a method nobody may call."""
    allowed = ALLOWED.get(method)
    if allowed is None:
        raise BadRequest(f"unknown method {describe(method)}")
    if not caller.may(allowed):
        roles = " or ".join(sorted(role.value for role in allowed))
        raise Forbidden(f"{method} needs a {roles} certificate; {caller} may not call it")


# -- arguments (raise BadRequest) -----------------------------------------------------


def arguments(args: list[Any], count: int | range, method: str) -> list[Any]:
    """The arguments, once their number is right."""
    counts = range(count, count + 1) if isinstance(count, int) else count
    if len(args) not in counts:
        wanted = str(count) if isinstance(count, int) else f"{counts.start}..{counts.stop - 1}"
        raise BadRequest(f"{method} takes {wanted} argument(s), got {len(args)}")
    return args


def _request(decode: Callable[[], T], method: str) -> T:
    try:
        return decode()
    except ValueError as exc:
        raise BadRequest(f"{method}: {exc}") from None


def node_arg(value: Any, space: IdSpace, method: str) -> NodeRef:
    return _request(lambda: NodeRef.from_wire(value, space), method)


def self_arg(value: Any, space: IdSpace, caller: PeerIdentity, method: str) -> NodeRef:
    """A node reference the caller gives for itself: on an authenticated link its ID
    must be one the caller's certificate gives (`identity.gives_position`)."""
    node = node_arg(value, space, method)
    if caller.authenticated and not gives_position(caller, node, space):
        raise Forbidden(f"{method}: {caller} may only name itself, not ID {space.short(node.id)}")
    return node


def refs_arg(value: Any, space: IdSpace, method: str) -> list[NodeRef]:
    return _request(lambda: refs_from_wire(value, space), method)


def ring_id_arg(value: Any, space: IdSpace, method: str) -> int:
    return _request(lambda: space.check(value), method)


def block_key_arg(value: Any, method: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise BadRequest(f"{method}: a block key is {HASH_SIZE} bytes, got {describe(value)}")
    return value


def block_keys_arg(value: Any, limit: int, method: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadRequest(f"{method}: expected a list of at most {limit} block keys, got {describe(value)}")
    return [block_key_arg(key, method) for key in value]


def step_args(args: list[Any], space: IdSpace) -> tuple[int, frozenset[int]]:
    """step(key[, dead node IDs]) → the key and the IDs to treat as dead."""
    arguments(args, range(1, 3), "step")
    key = ring_id_arg(args[0], space, "step")
    excluded = args[1] if len(args) == 2 else []
    if not isinstance(excluded, list) or len(excluded) > MAX_EXCLUDED:
        raise BadRequest(f"step: dead node IDs must be a list of at most {MAX_EXCLUDED}, got {describe(excluded)}")
    return key, frozenset(ring_id_arg(ident, space, "step") for ident in excluded)


@dataclass(frozen=True)
class Query:
    """A recursive lookup on its way (`dht.recursive`): the key, who asked and
    how to answer it (`nonce`), the hops it may still take, the nodes that
    passed it on, and whether it was sent to the node believed to own the key
    (which then answers and never passes it on)."""

    key: int
    asker: NodeRef
    nonce: int
    hops_left: int
    path: tuple[NodeRef, ...] = ()
    final: bool = False

    def to_wire(self) -> list[Any]:
        return [self.key, self.asker.to_wire(), self.nonce, self.hops_left, refs_to_wire(self.path), self.final]

    @classmethod
    def from_wire(cls, args: list[Any], space: IdSpace) -> "Query":
        key, asker, nonce, hops_left, path, final = arguments(args, 6, "forward")
        if not (_is_int(nonce) and 0 <= nonce < 1 << 64 and _is_int(hops_left) and 0 <= hops_left <= MAX_HOPS):
            raise BadRequest(f"forward: nonce and hops left must be 64-bit and 0..{MAX_HOPS}, got {describe(nonce)} and {describe(hops_left)}")
        if not isinstance(final, bool):
            raise BadRequest(f"forward: final must be true or false, got {describe(final)}")
        hops = _request(lambda: refs_from_wire(path, space, MAX_HOPS), "forward")
        return cls(ring_id_arg(key, space, "forward"), node_arg(asker, space, "forward"), nonce, hops_left, tuple(hops), final)


@dataclass(frozen=True)
class Found:
    """The answer to a recursive lookup, sent by the owner to the asker: the
    owner and its successors (`nodes`, empty when the query could not be
    answered), where the owner's arc starts, and the query's path."""

    nonce: int
    key: int
    nodes: list[NodeRef]
    arc_start: NodeRef | None
    path: list[NodeRef]

    def to_wire(self) -> list[Any]:
        start = self.arc_start.to_wire() if self.arc_start else None
        return [self.nonce, self.key, refs_to_wire(self.nodes), start, refs_to_wire(self.path)]

    @classmethod
    def from_wire(cls, args: list[Any], space: IdSpace) -> "Found":
        nonce, key, nodes, start, path = arguments(args, 5, "found")
        if not (_is_int(nonce) and 0 <= nonce < 1 << 64):
            raise BadRequest(f"found: the nonce must be 64-bit, got {describe(nonce)}")
        arc_start = None if start is None else node_arg(start, space, "found")
        return cls(nonce, ring_id_arg(key, space, "found"), refs_arg(nodes, space, "found"), arc_start,
                   _request(lambda: refs_from_wire(path, space, MAX_HOPS), "found"))


def arc_args(args: list[Any], space: IdSpace, method: str) -> tuple[int, int]:
    return ring_id_arg(args[0], space, method), ring_id_arg(args[1], space, method)


def digests_args(args: list[Any], space: IdSpace) -> tuple[int, int, int]:
    lo, hi = arc_args(arguments(args, 3, "digests"), space, "digests")
    parts = args[2]
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_SYNC_PARTS:
        raise BadRequest(f"digests: parts must be an integer in 1..{MAX_SYNC_PARTS}, got {describe(parts)}")
    return lo, hi, parts


def put_args(args: list[Any], max_block: int) -> tuple[bytes, bytes]:
    key, data = arguments(args, 2, "put_block")
    if not isinstance(data, bytes) or len(data) > max_block:
        raise BadRequest(f"put_block: a block is at most {max_block} bytes, got {describe(data)}")
    return block_key_arg(key, "put_block"), data


def prove_args(args: list[Any]) -> tuple[bytes, list[bytes]]:
    nonce, keys = arguments(args, 2, "prove_blocks")
    if not isinstance(nonce, bytes) or len(nonce) not in NONCE_SIZES:
        raise BadRequest(f"prove_blocks: a nonce is {NONCE_SIZES.start}..{NONCE_SIZES.stop - 1} bytes, got {describe(nonce)}")
    return nonce, block_keys_arg(keys, MAX_PROVE, "prove_blocks")


# -- replies (raise BadReply) --------------------------------------------------------------


def _reply(decode: Callable[[], T], method: str) -> T:
    try:
        return decode()
    except (ValueError, TypeError, KeyError) as exc:
        raise BadReply(f"bad {method} reply: {exc}") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def ping_reply(value: Any, space: IdSpace) -> NodeRef:
    return _reply(lambda: NodeRef.from_wire(value, space), "ping")


def step_reply(value: Any, space: IdSpace) -> tuple[bool, list[NodeRef]]:
    """→ (owner found, nodes): the owner and its successors, or nodes to ask next."""

    def decode() -> tuple[bool, list[NodeRef]]:
        _require(isinstance(value, list) and len(value) == 2, f"expected [kind, nodes], got {describe(value)}")
        kind, nodes = value[0], refs_from_wire(value[1], space)
        _require(kind in ("owner", "next"), f"kind must be owner or next, got {describe(kind)}")
        _require(kind == "next" or bool(nodes), "an owner answer names no node")
        return kind == "owner", nodes

    return _reply(decode, "step")


LIST_DIGEST_SIZE = 8


def list_digest(nodes: list[NodeRef]) -> bytes:
    """A short digest of a successor list: a notify that sends the digest of the
    list it last got back is answered without the list while it is unchanged."""
    return hashlib.blake2b(pack(refs_to_wire(nodes)), digest_size=LIST_DIGEST_SIZE).digest()


def notify_args(args: list[Any], space: IdSpace, caller: PeerIdentity) -> tuple[NodeRef, bytes | None]:
    """notify's [caller's own ref] or [ref, digest of the successor list it holds of us]."""
    arguments(args, range(1, 3), "notify")
    candidate = self_arg(args[0], space, caller, "notify")
    digest = args[1] if len(args) == 2 else None
    if digest is not None and not (isinstance(digest, bytes) and len(digest) == LIST_DIGEST_SIZE):
        raise BadRequest(f"notify: a successor list digest is {LIST_DIGEST_SIZE} bytes, got {describe(digest)}")
    return candidate, digest


def notify_reply(value: Any, space: IdSpace) -> tuple[NodeRef | None, list[NodeRef] | None]:
    """→ (the predecessor the peer had, its successor list, or None for "the one
    whose digest you sent")."""
    if isinstance(value, list) and len(value) == 2 and value[1] is None:
        return _arc_reply([value[0], []], space, "notify")[0], None
    return _arc_reply(value, space, "notify")


def arc_reply(value: Any, space: IdSpace) -> tuple[NodeRef | None, list[NodeRef]]:
    """→ (the peer's predecessor, its successor list): the arc it believes it owns."""
    return _arc_reply(value, space, "arc")


def _arc_reply(value: Any, space: IdSpace, method: str) -> tuple[NodeRef | None, list[NodeRef]]:
    def decode() -> tuple[NodeRef | None, list[NodeRef]]:
        _require(isinstance(value, list) and len(value) == 2, f"expected [predecessor, successors], got {describe(value)}")
        predecessor = None if value[0] is None else NodeRef.from_wire(value[0], space)
        return predecessor, refs_from_wire(value[1], space)

    return _reply(decode, method)


def adopted_reply(value: Any) -> bool:
    """consider_successor's answer: whether the node now follows the caller."""
    return flag_reply(value, "consider_successor")


def flag_reply(value: Any, method: str) -> bool:
    if not isinstance(value, bool):
        raise BadReply(f"bad {method} reply: expected true or false, got {describe(value)}")
    return value


def block_reply(value: Any) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        raise BadReply(f"bad get_block reply: expected bytes or nil, got {describe(value)}")
    return value


def proofs_reply(value: Any, count: int) -> list[bytes | None]:
    def decode() -> list[bytes | None]:
        _require(isinstance(value, list) and len(value) == count, f"expected {count} proofs, got {describe(value)}")
        for proof in value:
            _require(proof is None or (isinstance(proof, bytes) and len(proof) == HASH_SIZE), f"a proof is {HASH_SIZE} bytes or nil, got {describe(proof)}")
        return list(value)

    return _reply(decode, "prove_blocks")


def digests_reply(value: Any, parts: int, space: IdSpace) -> list[tuple[int, int]]:
    """→ (key count, XOR of the keys) per sub-arc."""

    def decode() -> list[tuple[int, int]]:
        _require(isinstance(value, list) and len(value) == parts, f"expected {parts} digests, got {describe(value)}")
        digests = []
        for item in value:
            _require(isinstance(item, list) and len(item) == 2, f"a digest is [count, xor], got {describe(item)}")
            count, xor = item
            _require(_is_int(count) and 0 <= count < 1 << 48, f"a digest count must be a small integer, got {describe(count)}")
            _require(_is_int(xor) and 0 <= xor < 1 << (8 * HASH_SIZE), f"a digest XOR must fit {HASH_SIZE} bytes, got {describe(xor)}")
            digests.append((count, xor))
        return digests

    return _reply(decode, "digests")


def keys_reply(value: Any) -> list[bytes]:
    def decode() -> list[bytes]:
        _require(isinstance(value, list) and len(value) <= MAX_LISTED_KEYS, f"expected at most {MAX_LISTED_KEYS} keys, got {describe(value)}")
        for key in value:
            _require(isinstance(key, bytes) and len(key) == HASH_SIZE, f"a block key is {HASH_SIZE} bytes, got {describe(key)}")
        return list(value)

    return _reply(decode, "list_keys")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- info and lookup replies, shared with the tools ------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """What a node reports about itself through the `info` call. `store` holds the
    block service's figures (replicas, blocks, used and capacity bytes) when the
    node stores blocks."""

    me: NodeRef
    bits: int
    predecessor: NodeRef | None
    successors: list[NodeRef]
    fingers: list[NodeRef]
    store: dict[str, int] = field(default_factory=dict)

    @property
    def successor(self) -> NodeRef:
        return self.successors[0] if self.successors else self.me

    def to_wire(self) -> dict[str, Any]:
        return {
            "address": self.me.address, "id": self.me.id, "bits": self.bits,
            "predecessor": self.predecessor.to_wire() if self.predecessor else None,
            "successors": refs_to_wire(self.successors), "fingers": refs_to_wire(self.fingers),
            "store": dict(self.store),
        }

    @classmethod
    def from_wire(cls, value: Any) -> "NodeInfo":
        return _reply(lambda: cls._decode(value), "info")

    @classmethod
    def _decode(cls, value: Any) -> "NodeInfo":
        _require(isinstance(value, dict), f"expected a map, got {describe(value)}")
        bits = value["bits"]
        _require(_is_int(bits) and 1 <= bits <= 256, f"bits must be 1..256, got {describe(bits)}")
        space = IdSpace(bits)
        predecessor = value["predecessor"]
        store = value.get("store", {})
        _require(isinstance(store, dict) and len(store) <= 16, f"store must be a small map, got {describe(store)}")
        _require(all(isinstance(k, str) and _is_int(v) and 0 <= v < 1 << 63 for k, v in store.items()), "store figures must be counts")
        return cls(
            me=NodeRef.from_wire([value["address"], value["id"]], space),
            bits=bits,
            predecessor=None if predecessor is None else NodeRef.from_wire(predecessor, space),
            successors=refs_from_wire(value["successors"], space),
            fingers=refs_from_wire(value["fingers"], space),
            store=store,
        )


@dataclass(frozen=True)
class LookupResult:
    """The owner of a key, the nodes after it, and the route the lookup took."""

    key: int
    owner: NodeRef
    successors: list[NodeRef]
    path: list[NodeRef] = field(default_factory=list)
    timeouts: int = 0
    arc_start: int | None = None  # the owner's arc is known to include (arc_start, owner]; not sent

    def covers(self, key: int) -> bool:
        """Whether this answer holds for `key` too: it lies in (arc_start, owner]."""
        return self.arc_start is not None and in_half_open(key, self.arc_start, self.owner.id)

    @property
    def hops(self) -> int:
        """Remote nodes that answered a routing step."""
        return len(self.path)

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key, "owner": self.owner.to_wire(), "successors": refs_to_wire(self.successors),
            "path": refs_to_wire(self.path), "hops": self.hops, "timeouts": self.timeouts,
        }

    @classmethod
    def from_wire(cls, value: Any, space: IdSpace) -> "LookupResult":
        def decode() -> LookupResult:
            _require(isinstance(value, dict), f"expected a map, got {describe(value)}")
            timeouts = value["timeouts"]
            _require(_is_int(timeouts) and 0 <= timeouts < 1 << 32, f"timeouts must be a count, got {describe(timeouts)}")
            successors = refs_from_wire(value["successors"], space)
            _require(bool(successors), "a lookup names no owner")
            return cls(space.check(value["key"]), NodeRef.from_wire(value["owner"], space), successors,
                       refs_from_wire(value["path"], space, MAX_REFS), timeouts)

        return _reply(decode, "lookup")
