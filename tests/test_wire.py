"""Unit tests for dht.wire: length-prefixed msgpack frames, the incremental FrameDecoder
(fed byte by byte, h11 style), big-integer packing, and request/reply validation.

Pure logic, no sockets.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from dht.errors import FrameTooLarge, ProtocolError
from dht.wire import (
    DIRECT_FRAME,
    MAX_FRAME,
    FrameDecoder,
    Reply,
    Request,
    encode_error,
    encode_frame,
    encode_reply,
    encode_request,
    frame_parts,
    pack,
    parse_reply,
    parse_request,
    request_id_of,
    unpack,
)

MESSAGES: list[Any] = [[1, "ping", []], [2, True, [["h:1", 2**255 + 7]]], "x" * 300, []]


def drain(decoder: FrameDecoder) -> list[bytes]:
    out: list[bytes] = []
    while (payload := decoder.next_payload()) is not None:
        out.append(payload)
    return out


# -- encode_frame -----------------------------------------------------------------------------


def test_encode_frame_is_big_endian_length_plus_msgpack() -> None:
    message = [7, "find_successor", [123]]
    payload = msgpack.packb(message, use_bin_type=True)
    frame = encode_frame(message)
    assert frame[:4] == struct.pack(">I", len(payload))
    assert frame[4:] == payload
    assert frame == len(payload).to_bytes(4, "big") + payload


def test_encode_frame_length_uses_all_four_bytes() -> None:
    frame = encode_frame(b"x" * 70000)
    assert frame[:4] == (len(frame) - 4).to_bytes(4, "big")
    assert frame[1] == 1  # 70000+ bytes needs the third-lowest byte


def test_encode_frame_over_cap_raises() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 100, max_frame=50)
    exact = pack(b"x" * 10)
    assert encode_frame(b"x" * 10, max_frame=len(exact))[4:] == exact
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 10, max_frame=len(exact) - 1)


def test_default_cap_fits_a_max_block() -> None:
    frame = encode_frame([1, True, b"\0" * (1 << 20)])
    assert len(frame) - 4 <= MAX_FRAME
    with pytest.raises(FrameTooLarge):
        encode_frame(b"\0" * (MAX_FRAME + 1))


@pytest.mark.parametrize("value", [{1, 2}, object(), [1, {"a": frozenset()}], 1j])
def test_encode_unsupported_type_raises_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        encode_frame(value)
    with pytest.raises(TypeError):
        pack(value)


# -- FrameDecoder -------------------------------------------------------------------------------


def test_decoder_byte_by_byte_yields_exactly_the_messages() -> None:
    frames = [encode_frame(m) for m in MESSAGES]
    stream = b"".join(frames)
    ends = {sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))}
    decoder = FrameDecoder()
    got: list[Any] = []
    for offset in range(len(stream)):
        decoder.feed(stream[offset : offset + 1])
        out = drain(decoder)
        if offset + 1 in ends:
            assert len(out) == 1, offset
        else:
            assert out == [], offset
        got.extend(unpack(p) for p in out)
    assert got == MESSAGES
    assert decoder.next_payload() is None
    assert not decoder.in_frame


def test_decoder_two_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame([1, "a", []]) + encode_frame([2, "b", [3]]))
    assert [unpack(p) for p in drain(decoder)] == [[1, "a", []], [2, "b", [3]]]
    assert decoder.next_payload() is None


def test_decoder_frame_and_a_half_then_rest() -> None:
    second = encode_frame([2, "b", []])
    decoder = FrameDecoder()
    decoder.feed(encode_frame([1, "a", []]) + second[:5])
    assert drain(decoder) == [pack([1, "a", []])]
    assert decoder.in_frame
    decoder.feed(second[5:])
    assert drain(decoder) == [pack([2, "b", []])]


def test_decoder_empty_payload_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\0\0\0\0")
    assert decoder.next_payload() == b""
    assert decoder.next_payload() is None


def test_in_frame_states() -> None:
    frame = encode_frame([1, "ping", []])
    decoder = FrameDecoder()
    assert not decoder.in_frame
    decoder.feed(frame[:1])
    assert decoder.in_frame  # partial length prefix
    decoder.feed(frame[1:4])
    assert decoder.next_payload() is None
    assert decoder.in_frame  # prefix only
    decoder.feed(frame[4:-1])
    assert decoder.next_payload() is None
    assert decoder.in_frame  # body incomplete
    decoder.feed(frame[-1:])
    assert decoder.next_payload() == frame[4:]
    assert not decoder.in_frame  # consumed


def test_frame_parts_are_the_prefix_and_the_payload() -> None:
    prefix, payload = frame_parts([1, "ping", [b"x" * 100]])
    assert payload == pack([1, "ping", [b"x" * 100]])
    assert prefix == struct.pack(">I", len(payload))
    assert prefix + payload == encode_frame([1, "ping", [b"x" * 100]])
    with pytest.raises(FrameTooLarge):
        frame_parts(b"x" * 100, max_frame=50)


def big_frame_then_small() -> tuple[bytes, bytes, bytes]:
    """A frame long enough to be received in place, a small one after it, and the payload of the first."""
    payload = pack([7, "put_block", [b"k" * 32, bytes(range(256)) * 1024]])
    assert len(payload) >= DIRECT_FRAME
    return encode_frame(msgpack.unpackb(payload)), encode_frame([8, "ping", []]), payload


def test_a_small_frame_is_never_received_in_place() -> None:
    decoder = FrameDecoder()
    frame = encode_frame([1, "ping", [b"x" * 1000]])
    decoder.feed(frame[:600])
    assert decoder.room() is None
    assert decoder.missing() == len(frame) - 600


def test_a_large_frame_is_received_in_place_once_an_eighth_is_in() -> None:
    big, small, payload = big_frame_then_small()
    decoder = FrameDecoder()
    decoder.feed(big[:100])
    assert decoder.room() is None  # too little of it yet: no buffer of the full size for a bare length
    decoder.feed(big[100 : len(big) // 4])
    room = decoder.room()
    assert room is not None and len(room) == len(big) - len(big) // 4 == decoder.missing()
    assert decoder.in_frame and decoder.next_payload() is None
    room[:1000] = big[len(big) // 4 : len(big) // 4 + 1000]
    decoder.received(1000)
    assert decoder.missing() == len(room) - 1000
    rest = decoder.room()
    assert rest is not None and len(rest) == len(room) - 1000
    rest[:] = big[len(big) // 4 + 1000 :]
    decoder.received(len(rest))
    assert decoder.missing() == 0
    assert decoder.next_payload() == payload
    assert not decoder.in_frame and decoder.room() is None
    decoder.feed(small)
    assert decoder.next_payload() == small[4:]


def test_feeding_a_frame_received_in_place_fills_it_and_keeps_what_follows() -> None:
    big, small, payload = big_frame_then_small()
    decoder = FrameDecoder()
    decoder.feed(big[: len(big) // 2])
    assert decoder.room() is not None
    decoder.feed(big[len(big) // 2 :] + small)  # the rest, and the next frame, through feed after all
    assert decoder.next_payload() == payload
    assert decoder.next_payload() == small[4:]
    assert decoder.next_payload() is None


def test_an_oversize_length_is_never_given_room() -> None:
    decoder = FrameDecoder(max_frame=DIRECT_FRAME)
    decoder.feed(struct.pack(">I", DIRECT_FRAME + 1) + b"x" * DIRECT_FRAME)
    assert decoder.room() is None
    with pytest.raises(FrameTooLarge):
        decoder.next_payload()


def test_oversize_prefix_raises_before_body() -> None:
    decoder = FrameDecoder(max_frame=10)
    prefix = struct.pack(">I", 11)
    decoder.feed(prefix[:3])
    assert decoder.next_payload() is None  # not enough to know yet
    decoder.feed(prefix[3:])
    with pytest.raises(FrameTooLarge):
        decoder.next_payload()


def test_frame_at_cap_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(struct.pack(">I", 10) + b"0123456789")
    assert decoder.next_payload() == b"0123456789"


def test_huge_prefix_rejected_by_default_cap() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        decoder.next_payload()


def test_frame_too_large_is_a_protocol_error() -> None:
    assert issubclass(FrameTooLarge, ProtocolError)


# -- pack / unpack ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 2**63 - 1, 2**64 - 1, 2**64, 2**255 + 12345, 2**256 - 1, -(2**63), -(2**63) - 1,
     -(2**64), -(2**255), -(2**256) + 1, "h\u00e9", b"\x00\xff", None, 1.5, {"k": [2**200]}],
)
def test_pack_unpack_round_trip(value: Any) -> None:
    result = unpack(pack(value))
    assert result == value
    assert type(result) is type(value)


def test_nested_lists_and_tuples_round_trip_as_lists() -> None:
    value = [1, [2**70, (3, -(2**90))], [[b"blob", []]], ("a",)]
    assert unpack(pack(value)) == [1, [2**70, [3, -(2**90)]], [[b"blob", []]], ["a"]]


def test_bools_stay_bools() -> None:
    assert unpack(pack([True, False])) == [True, False]
    assert unpack(pack(True)) is True


@pytest.mark.parametrize("value", [2**64, 2**256 - 1, -(2**63) - 1, -(2**300)])
def test_big_int_is_ext_type_1_twos_complement(value: int) -> None:
    raw = msgpack.unpackb(pack(value))
    assert isinstance(raw, msgpack.ExtType)
    assert raw.code == 1
    assert int.from_bytes(raw.data, "big", signed=True) == value


def test_64_bit_ints_stay_native() -> None:
    assert msgpack.unpackb(pack(2**64 - 1)) == 2**64 - 1
    assert msgpack.unpackb(pack(-(2**63))) == -(2**63)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xc1", b"\x93\x01", b"\x01\x02", b"\xd4\x05\x00", b"\xa5ab", b"\xdd\xff\xff\xff\xff"],
)
def test_unpack_garbage_raises_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(garbage)


# -- parse_request --------------------------------------------------------------------------------


def test_parse_request_accepts_well_formed() -> None:
    assert parse_request(pack([7, "find_successor", [2**200]])) == Request(7, "find_successor", [2**200])
    assert parse_request(pack([0, "", []])) == Request(0, "", [])
    assert parse_request(pack([2**64 - 1, "m", []])).request_id == 2**64 - 1


def test_encode_request_round_trips() -> None:
    frame = encode_request(42, "get", [b"k", 2**256 - 1])
    decoder = FrameDecoder()
    decoder.feed(frame)
    payload = decoder.next_payload()
    assert payload is not None
    assert parse_request(payload) == Request(42, "get", [b"k", 2**256 - 1])


@pytest.mark.parametrize(
    "message",
    [
        "req",
        {"id": 1},
        [1, "m"],
        [1, "m", [], 4, 0],
        [1, "m", [], 64],
        [1, "m", [], -1],
        [1, "m", [], True],
        [-1, "m", []],
        [2**64, "m", []],
        [True, "m", []],
        [False, "m", []],
        ["1", "m", []],
        [1.0, "m", []],
        [None, "m", []],
        [1, 5, []],
        [1, b"m", []],
        [1, "m", "args"],
        [1, "m", {"a": 1}],
        [1, "m", None],
    ],
)
def test_parse_request_rejects_malformed(message: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_request(pack(message))


def test_parse_request_rejects_garbage_bytes() -> None:
    with pytest.raises(ProtocolError):
        parse_request(b"\xc1\xc1")


# -- parse_reply ----------------------------------------------------------------------------------------


def test_parse_reply_ok() -> None:
    assert parse_reply(pack([3, True, {"x": 2**100}])) == Reply(3, True, {"x": 2**100})
    assert parse_reply(pack([3, True, None])) == Reply(3, True, None)


def test_parse_reply_error() -> None:
    assert parse_reply(pack([3, False, ["KeyError", "no such block"]])) == Reply(
        3, False, ["KeyError", "no such block"]
    )


def test_encode_reply_and_error_round_trip() -> None:
    assert parse_reply(encode_reply(9, True, [1, 2])[4:]) == Reply(9, True, [1, 2])
    assert parse_reply(encode_error(9, "BadRequest", "nope")[4:]) == Reply(9, False, ["BadRequest", "nope"])


@pytest.mark.parametrize(
    "message",
    [
        "reply",
        [3, True],
        [3, True, None, 4],
        [3, 1, None],
        [3, None, None],
        [-1, True, None],
        [2**64, True, None],
        [True, True, None],
        [None, False, ["K", "m"]],
        [3, False, "boom"],
        [3, False, None],
        [3, False, ["K"]],
        [3, False, ["K", "m", "x"]],
        [3, False, ["K", 1]],
        [3, False, [b"K", "m"]],
    ],
)
def test_parse_reply_rejects_malformed(message: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(pack(message))


# -- request_id_of ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ([9, 5, "not args"], 9),
        ([9], 9),
        ([0, "m", []], 0),
        ([2**64 - 1, None], 2**64 - 1),
        ([], None),
        ("x", None),
        ({"0": 1}, None),
        ([-1, "m", []], None),
        ([True, "m", []], None),
        ([2**64, "m", []], None),
        (["9", "m", []], None),
    ],
)
def test_request_id_of_best_effort(message: Any, expected: int | None) -> None:
    assert request_id_of(pack(message)) == expected


def test_request_id_of_garbage_is_none() -> None:
    assert request_id_of(b"\xc1") is None
    assert request_id_of(b"") is None
