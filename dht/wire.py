"""The TCP wire format: length-prefixed msgpack frames. Pure: no sockets.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
Requests are ``[request_id, method, args]``, or ``[request_id, method, args, vnode]``
for a process's virtual node `vnode` (1 to 63; the plain form is position 0), and
replies ``[request_id, ok, result]`` where ``result`` is ``[kind, message]`` when ok
is false. Integers wider than 64 bits
(ring identifiers) travel as msgpack extension type 1, big-endian two's complement,
at most `MAX_BIGINT_BYTES` long: no frame can carry an integer too large to print.

`FrameDecoder` is an incremental parser in the manner of h11: feed it bytes, pull
complete messages out; it raises typed errors and never touches a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from .addresses import MAX_VNODES
from .errors import FrameTooLarge, ProtocolError, describe

MAX_BLOCK = 1 << 20
MAX_FRAME = MAX_BLOCK + 64 * 1024
_LENGTH = struct.Struct(">I")
DIRECT_FRAME = 64 * 1024  # frames at least this long may be received in place (FrameDecoder.room)
_BIGINT_EXT = 1
MAX_BIGINT_BYTES = 40  # room for a 256-bit ID and its sign; nothing on the wire is wider
MAX_ERROR_MESSAGE = 1000  # characters of an error reply's message


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    method: str
    args: list[Any]
    vnode: int = 0  # which of the serving process's ring positions is called


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    ok: bool
    result: Any


def _pack_default(value: Any) -> Any:
    if isinstance(value, int):
        length = (value.bit_length() + 8) // 8
        return msgpack.ExtType(_BIGINT_EXT, value.to_bytes(length, "big", signed=True))
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} on the wire")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _BIGINT_EXT:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    if len(data) > MAX_BIGINT_BYTES:
        raise ProtocolError(f"an integer of {len(data)} bytes exceeds the {MAX_BIGINT_BYTES}-byte limit")
    return int.from_bytes(data, "big", signed=True)



def pack(value: Any) -> bytes:
    """msgpack-encode a value, big integers included."""
    return msgpack.packb(value, default=_pack_default, use_bin_type=True)


def unpack(data: bytes | bytearray) -> Any:
    """Decode one msgpack value; raise ProtocolError on anything malformed."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed msgpack payload: {exc or type(exc).__name__}") from None


def frame_parts(message: Any, max_frame: int = MAX_FRAME) -> tuple[bytes, bytes]:
    """A frame as its length prefix and its payload, so that a large payload can
    go to the socket without being copied behind its prefix."""
    payload = pack(message)
    if len(payload) > max_frame:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the cap of {max_frame}")
    return _LENGTH.pack(len(payload)), payload


def encode_frame(message: Any, max_frame: int = MAX_FRAME) -> bytes:
    return b"".join(frame_parts(message, max_frame))


def request_message(request_id: int, method: str, args: list[Any], vnode: int = 0) -> list[Any]:
    """A request as a list to encode: the short form for a process's first position."""
    return [request_id, method, args, vnode] if vnode else [request_id, method, args]


def encode_request(request_id: int, method: str, args: list[Any], max_frame: int = MAX_FRAME, vnode: int = 0) -> bytes:
    return encode_frame(request_message(request_id, method, args, vnode), max_frame)


def encode_reply(request_id: int | None, ok: bool, result: Any, max_frame: int = MAX_FRAME) -> bytes:
    return encode_frame([request_id, ok, result], max_frame)


def encode_error(request_id: int | None, kind: str, message: str) -> bytes:
    return encode_reply(request_id, False, [kind[:100], message[:MAX_ERROR_MESSAGE]])


class FrameDecoder:
    """Incremental frame parser: `feed` bytes, then call `next_payload` until None.

    Consumed frames are skipped by an offset and the buffer compacted only once
    it is drained or half consumed, so a read holding many frames costs one copy
    of each payload, not a shift of everything after it. The rest of a large
    frame can be received in place instead (`room`, then `received`): into a
    buffer of the frame's own size, which becomes the payload with no copy. Such
    a buffer is made only once an eighth of the frame is in, so a peer that sends
    a length and stalls cannot make the decoder hold much more than it sent."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._start = 0  # where the unconsumed bytes begin
        self._frame: bytearray | None = None  # a large frame's payload being received in place
        self._filled = 0  # how much of it has arrived

    def feed(self, data: bytes) -> None:
        if self._frame is not None:  # the frame being received in place comes first
            take = min(len(data), len(self._frame) - self._filled)
            self._frame[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if not data:
                return
        if self._start and self._start * 2 >= len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def room(self) -> memoryview | None:
        """Where the rest of the large frame in progress can be received in place;
        None when the next bytes should be fed as usual."""
        if self._frame is None:
            buffered = len(self._buffer) - self._start
            if buffered < _LENGTH.size:
                return None
            (length,) = _LENGTH.unpack_from(self._buffer, self._start)
            arrived = buffered - _LENGTH.size
            if not DIRECT_FRAME <= length <= self.max_frame or arrived >= length or arrived * 8 < length:
                return None
            self._frame = bytearray(length)
            self._frame[:arrived] = memoryview(self._buffer)[self._start + _LENGTH.size :]
            self._filled = arrived
            self._buffer.clear()
            self._start = 0
        return memoryview(self._frame)[self._filled :]

    def received(self, count: int) -> None:
        """`count` more bytes were written into what `room` returned."""
        self._filled += count

    def missing(self) -> int:
        """Bytes the frame in progress still needs (0 while no length has arrived)."""
        if self._frame is not None:
            return len(self._frame) - self._filled
        buffered = len(self._buffer) - self._start
        if buffered < _LENGTH.size:
            return 0
        (length,) = _LENGTH.unpack_from(self._buffer, self._start)
        return max(0, _LENGTH.size + min(length, self.max_frame) - buffered)

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not yet fully arrived."""
        return self._frame is not None or len(self._buffer) > self._start

    def next_payload(self) -> bytes | bytearray | None:
        """The next complete frame's payload, or None when more bytes are needed."""
        if self._frame is not None:
            if self._filled < len(self._frame):
                return None
            payload, self._frame = self._frame, None
            return payload
        start = self._start
        if len(self._buffer) - start < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer, start)
        if length > self.max_frame:
            raise FrameTooLarge(f"frame length {length} exceeds the cap of {self.max_frame}")
        end = start + _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(memoryview(self._buffer)[start + _LENGTH.size : end])
        if end == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        else:
            self._start = end
        return payload


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


def parse_request(payload: bytes | bytearray) -> Request:
    """Decode and validate a request frame's payload."""
    message = unpack(payload)
    if not isinstance(message, list) or len(message) not in (3, 4):
        raise ProtocolError(f"a request must be [request_id, method, args] or [request_id, method, args, vnode], got {describe(message)}")
    request_id, method, args = message[:3]
    vnode = message[3] if len(message) == 4 else 0
    if isinstance(vnode, bool) or not isinstance(vnode, int) or not 0 <= vnode < MAX_VNODES:
        raise ProtocolError(f"vnode must be an integer in 0..{MAX_VNODES - 1}, got {describe(vnode)}")
    if not _is_id(request_id):
        raise ProtocolError(f"request_id must be an unsigned 64-bit integer, got {describe(request_id)}")
    if not isinstance(method, str):
        raise ProtocolError(f"method must be a string, got {describe(method)}")
    if not isinstance(args, list):
        raise ProtocolError(f"args must be a list, got {describe(args)}")
    return Request(request_id, method, args, vnode)


def parse_reply(payload: bytes | bytearray) -> Reply:
    """Decode and validate a reply frame's payload."""
    message = unpack(payload)
    if not isinstance(message, list) or len(message) != 3 or not isinstance(message[1], bool):
        raise ProtocolError(f"a reply must be [request_id, ok, result], got {describe(message)}")
    request_id, ok, result = message
    if not _is_id(request_id):
        raise ProtocolError(f"reply request_id must be an unsigned 64-bit integer, got {describe(request_id)}")
    if not ok and not (isinstance(result, list) and len(result) == 2 and all(isinstance(x, str) for x in result)):
        raise ProtocolError(f"an error reply must carry [kind, message], got {describe(result)}")
    return Reply(request_id, ok, result)


def request_id_of(payload: bytes | bytearray) -> int | None:
    """Best-effort request ID of a payload that failed validation, for the error reply."""
    try:
        message = unpack(payload)
    except ProtocolError:
        return None
    if isinstance(message, list) and message and _is_id(message[0]):
        return message[0]
    return None
