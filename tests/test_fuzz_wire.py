"""Fuzzing every parser a peer's bytes reach: the frame decoder, request and reply
validation, every RPC handler's argument checks, and every reply decoder.

The property each time: hostile input gets a typed error (ProtocolError,
BadRequest, BadReply and their kin, all ChordError), never any other exception,
and never a crash while an error message is built. Runs a bounded number of
examples in the suite; `python3 dev.py fuzz` runs the nightly profile.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dht import messages
from dht.blockstore import MemoryBlockStore
from dht.errors import BadReply, ChordError, ProtocolError, describe
from dht.identity import UNAUTHENTICATED, PeerIdentity, Role
from dht.ids import IdSpace
from dht.node import ChordNode, NodeConfig
from dht.routing import NodeRef
from dht.simnet import SimNetwork
from dht.storage import BlockService
from dht.transport import remote_error_of
from dht.wire import DIRECT_FRAME, FrameDecoder, encode_frame, pack, parse_reply, parse_request, request_id_of, unpack

from .fuzzkit import NESTING, arguments_ish, node_refs_ish, ref_lists_ish, wire_values

SPACE = IdSpace(256)
CALLERS = [UNAUTHENTICATED, PeerIdentity(Role.NODE, "n", 7), PeerIdentity(Role.CLIENT, "c", 8), PeerIdentity(Role.READER, "r", 9)]


# -- frames and messages -------------------------------------------------------------------------


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_frame_decoder_takes_any_bytes_in_any_split(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame=2048)
    offset = 0
    try:
        for size in [*cuts, len(data)]:
            decoder.feed(data[offset : offset + size])
            offset += size
            while (payload := decoder.next_payload()) is not None:
                for parse in (parse_request, parse_reply, request_id_of):
                    try:
                        parse(payload)
                    except ProtocolError:
                        pass
    except ProtocolError:
        pass  # FrameTooLarge: the connection would close


@given(
    st.lists(st.integers(min_value=0, max_value=3 * DIRECT_FRAME), min_size=1, max_size=4),
    st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=DIRECT_FRAME)), max_size=40),
)
def test_receiving_in_place_or_by_feed_gives_the_same_payloads(sizes: list[int], steps: list[tuple[bool, int]]) -> None:
    """Whatever mix of `feed` and `room`/`received` delivers the stream, and in
    whatever pieces, the payloads come out whole, in order, and nothing else."""
    payloads = [bytes([index]) * size for index, size in enumerate(sizes)]
    stream = b"".join(struct.pack(">I", len(payload)) + payload for payload in payloads)
    decoder, offset, got = FrameDecoder(), 0, []
    for in_place, size in [*steps, *[(False, len(stream))] * 2]:
        room = decoder.room() if in_place else None
        if room is not None:
            piece = stream[offset : offset + min(size, len(room))]
            room[: len(piece)] = piece
            decoder.received(len(piece))
        else:
            piece = stream[offset : offset + size]
            decoder.feed(piece)
        offset += len(piece)
        while (payload := decoder.next_payload()) is not None:
            got.append(bytes(payload))
    assert offset == len(stream)
    assert got == payloads
    assert not decoder.in_frame


@given(st.one_of(wire_values, NESTING))
def test_any_msgpack_value_parses_or_is_a_protocol_error(value: Any) -> None:
    try:
        payload = pack(value)
    except (TypeError, ValueError, OverflowError):
        return  # not encodable (e.g. nesting past msgpack's own limit): nothing to send
    for parse in (parse_request, parse_reply):
        try:
            parse(payload)
        except ProtocolError as exc:
            str(exc)
    request_id_of(payload)


@given(st.integers(min_value=2**320, max_value=2**20000) | st.integers(max_value=-(2**320), min_value=-(2**20000)))
def test_integers_too_wide_for_any_id_are_refused_at_decode(value: int) -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        unpack(pack([value, "ping", []]))


@given(st.one_of(wire_values, NESTING))
def test_describe_never_fails(value: Any) -> None:
    assert len(describe(value)) < 200


def test_an_error_whose_message_cannot_be_printed_is_still_reported() -> None:
    kind, message = remote_error_of(ValueError(10**5000))
    assert kind == "ValueError" and "bits" in message


# -- RPC handlers ------------------------------------------------------------------------------------


def lone_storing_node() -> ChordNode:
    network = SimNetwork(rng=random.Random(1))
    node = ChordNode(network.endpoint("sim-1"), NodeConfig(bits=256))
    BlockService(node, MemoryBlockStore(node.space, capacity=1 << 20))
    return node


NODE = lone_storing_node()
METHODS = sorted(messages.ALLOWED) + ["no_such_method", ""]


async def call_handler(node: ChordNode, caller: PeerIdentity, method: Any, args: Any) -> None:
    """What the transport does: only a str method and a list of args get this far."""
    try:
        result = node.handle(caller, method, args)
        if hasattr(result, "__await__"):
            with trio.fail_after(5):
                result = await result
        pack(result)  # every answer must be sendable
    except ChordError as exc:
        remote_error_of(exc)


@given(st.sampled_from(METHODS), st.sampled_from(CALLERS), arguments_ish)
async def test_every_handler_checks_its_arguments(method: str, caller: PeerIdentity, args: list[Any]) -> None:
    await call_handler(NODE, caller, method, args if isinstance(args, list) else [args])


@given(st.sampled_from(["notify", "consider_successor", "successor_leaving", "predecessor_leaving", "step", "lookup"]),
       st.lists(node_refs_ish, min_size=1, max_size=2))
async def test_ring_handlers_take_any_node_reference(method: str, args: list[Any]) -> None:
    await call_handler(lone_storing_node(), UNAUTHENTICATED, method, args)


def test_forbidden_roles_are_refused_before_any_argument_is_read() -> None:
    node = lone_storing_node()
    reader, client = CALLERS[3], CALLERS[2]
    for method, caller in [("put_block", reader), ("notify", client), ("notify", reader), ("prove_blocks", reader),
                           ("digests", reader), ("list_keys", client), ("consider_successor", client)]:
        with pytest.raises(messages.Forbidden, match=method):
            node.handle(caller, method, ["anything"])


def test_a_node_may_only_name_itself() -> None:
    node = lone_storing_node()
    impostor = PeerIdentity(Role.NODE, "mallory", 1234)
    for method, args in [("notify", [["evil:1", 999]]), ("consider_successor", [["evil:1", 999]]),
                         ("successor_leaving", [["evil:1", 999], []]), ("predecessor_leaving", [["evil:1", 999], None])]:
        with pytest.raises(messages.Forbidden, match="only name itself"):
            node.handle(impostor, method, args)
    assert node.routing.predecessor is None  # nothing was changed


# -- replies -----------------------------------------------------------------------------------------

DECODERS: dict[str, Callable[[Any], Any]] = {
    "ping": lambda v: messages.ping_reply(v, SPACE),
    "step": lambda v: messages.step_reply(v, SPACE),
    "notify": lambda v: messages.notify_reply(v, SPACE),
    "consider_successor": lambda v: messages.flag_reply(v, "consider_successor"),
    "get_block": messages.block_reply,
    "prove_blocks": lambda v: messages.proofs_reply(v, 3),
    "digests": lambda v: messages.digests_reply(v, 4, SPACE),
    "list_keys": messages.keys_reply,
    "info": messages.NodeInfo.from_wire,
    "lookup": lambda v: messages.LookupResult.from_wire(v, SPACE),
}


@given(st.sampled_from(sorted(DECODERS)), st.one_of(wire_values, NESTING, ref_lists_ish,
       st.tuples(node_refs_ish, ref_lists_ish).map(list), st.tuples(st.sampled_from(["owner", "next"]), ref_lists_ish).map(list)))
def test_every_reply_decoder_refuses_bad_shapes_with_bad_reply(method: str, value: Any) -> None:
    try:
        DECODERS[method](value)
    except BadReply as exc:
        str(exc)


@given(st.dictionaries(st.sampled_from(["address", "id", "bits", "predecessor", "successors", "fingers", "store", "key",
                                        "owner", "path", "timeouts"]), st.one_of(wire_values, node_refs_ish, ref_lists_ish)))
def test_info_and_lookup_maps_with_any_fields(value: dict[str, Any]) -> None:
    for decode in (DECODERS["info"], DECODERS["lookup"]):
        try:
            decode(value)
        except BadReply:
            pass


def test_good_replies_still_decode() -> None:
    ref = NodeRef(5, "a:1")
    assert messages.step_reply(["owner", [ref.to_wire()]], SPACE) == (True, [ref])
    assert messages.notify_reply([None, [ref.to_wire()]], SPACE) == (None, [ref])
    assert messages.proofs_reply([None, b"x" * 32, None], 3) == [None, b"x" * 32, None]
    assert messages.digests_reply([[1, 2]] * 4, 4, SPACE) == [(1, 2)] * 4
    frame = encode_frame([1, True, ref.to_wire()])
    assert parse_reply(frame[4:]).result == ["a:1", 5]
