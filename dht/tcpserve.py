"""The serving side of a TCP link: reading a peer's request frames, answering
them, and logging refused connections without flooding the log.

Owns one incoming connection after its handshake (`ServerConnection`): frames are
cut from what arrives (`receive_frames`), each request goes to the transport's
handler for the ring position it names, answers that need no I/O go out at once
and together, and the rest run in their own tasks, a bounded number per link. A
peer that stalls mid-frame or sends nothing for too long is dropped. The
transport (`dht.tcp`) owns the sockets, the listener and the outgoing side.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Awaitable, Callable, Sequence

import trio

from .errors import ChordError, FrameTooLarge, ProtocolError
from .identity import PeerIdentity
from .streams import Buffer, SendQueue, SocketChannel
from .transport import remote_error_of
from .wire import FrameDecoder, Request, encode_error, frame_parts, parse_request, request_id_of

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
FIRST_READ = 64 * 1024  # read at a frame boundary: many small frames, or enough of a large one to receive the rest in place
MAX_HANDLERS_PER_CONNECTION = 128
REFUSAL_LOG_EVERY = 10.0  # seconds: at most a few refusal lines per span, then a count


class RefusalLog:
    """Log refused connections without letting a flood fill the log: the first
    few in each span, then one line counting the rest."""

    def __init__(self, per_span: int = 5, span: float = REFUSAL_LOG_EVERY) -> None:
        self.per_span, self.span = per_span, span
        self._span_start, self._logged, self._suppressed = -math.inf, 0, 0

    def refused(self, peer: str, reason: str) -> None:
        now = trio.current_time()
        if now - self._span_start >= self.span:
            if self._suppressed:
                log.warning("refused %d more connections in the last %g s", self._suppressed, self.span)
            self._span_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self.per_span:
            self._logged += 1
            log.warning("refused a connection from %s: %s", peer, reason)
        else:
            self._suppressed += 1




class ServerConnection:
    """One incoming connection. A handler that answers at once (returns a value)
    is answered inline, and the replies to every request in one read go out in a
    single send; a handler that returns an awaitable runs in its own task, at most
    MAX_HANDLERS_PER_CONNECTION at a time."""

    def __init__(
        self, stream: SocketChannel, handlers: trio.Nursery, handler: Callable[[PeerIdentity, Request], Any], max_frame: int, caller: PeerIdentity
    ) -> None:
        self.stream = stream
        self.handlers = handlers
        self.handler = handler
        self.max_frame = max_frame
        self.caller = caller
        self.send_lock = trio.Lock()
        self.limiter = trio.CapacityLimiter(MAX_HANDLERS_PER_CONNECTION)
        self.outbox = SendQueue()

    async def serve(self, frame_timeout: float, idle_timeout: float) -> None:
        """Read and answer requests until the peer hangs up, stalls mid-frame for
        `frame_timeout`, or sends nothing for `idle_timeout` (a slot held open)."""
        decoder = FrameDecoder(self.max_frame)
        frame_deadline = math.inf  # a started frame must be complete by then
        try:
            while True:
                try:
                    payload = decoder.next_payload()
                except FrameTooLarge as exc:
                    self.outbox.add(encode_error(None, "FrameTooLarge", str(exc)))
                    await self.flush()
                    return
                if payload is None:
                    await self.flush()
                    if decoder.in_frame and frame_deadline == math.inf:
                        frame_deadline = trio.current_time() + frame_timeout
                    idle_deadline = trio.current_time() + idle_timeout
                    with trio.fail_at(min(frame_deadline, idle_deadline)):
                        if not await receive_frames(self.stream, decoder):
                            return
                    continue
                frame_deadline = math.inf
                await self.dispatch(payload)
        except trio.TooSlowError:
            log.info("dropping a connection that %s", "stalled mid-frame" if decoder.in_frame else f"sent nothing for {idle_timeout:g} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def dispatch(self, payload: bytes) -> None:
        try:
            request = parse_request(payload)
        except ProtocolError as exc:
            self.outbox.add(encode_error(request_id_of(payload), "ProtocolError", str(exc)))
            return
        try:
            result = self.handler(self.caller, request)
        except Exception as exc:  # reported to the caller, never fatal to the node
            self.outbox.add(self.error_frame(request, exc))
            return
        if inspect.isawaitable(result):
            slot = object()
            await self.limiter.acquire_on_behalf_of(slot)
            self.handlers.start_soon(self.finish, request, result, slot)
        else:
            self.outbox.add(*self.reply_frame(request, result))
        if self.outbox.size >= RECEIVE_SIZE:
            await self.flush()

    async def finish(self, request: Request, pending: Awaitable[Any], slot: object) -> None:
        try:
            try:
                frame = self.reply_frame(request, await pending)
            except Exception as exc:  # reported to the caller, never fatal to the node
                frame = (self.error_frame(request, exc),)
            await self.send(frame)
        finally:
            self.limiter.release_on_behalf_of(slot)

    def reply_frame(self, request: Request, result: Any) -> tuple[bytes, ...]:
        try:
            return frame_parts([request.request_id, True, result], self.max_frame)
        except (FrameTooLarge, TypeError) as exc:
            return (self.error_frame(request, exc),)

    def error_frame(self, request: Request, exc: Exception) -> bytes:
        if not isinstance(exc, ChordError):  # a bug: the caller hears of it, the log shows where
            log.error("handler for %s failed", request.method, exc_info=exc)
        return encode_error(request.request_id, *remote_error_of(exc))

    async def flush(self) -> None:
        if self.outbox:
            await self.send(self.outbox.take())

    async def send(self, buffers: Sequence[Buffer]) -> None:
        try:
            async with self.send_lock:
                await self.stream.send_many(buffers)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def receive_frames(stream: SocketChannel, decoder: FrameDecoder) -> bool:
    """Receive more of a stream of frames into `decoder`: the rest of a large
    frame straight into its own buffer, anything else through `feed` (at a frame
    boundary no more than FIRST_READ, so that a large frame's rest is left for
    its own buffer). False at the end of the stream."""
    missing = decoder.missing()
    stream.expect(missing)
    room = decoder.room()
    if room is not None:
        count = await stream.receive_into(room)
        decoder.received(count)
        return count > 0
    data = await stream.receive_some(max(RECEIVE_SIZE, missing) if decoder.in_frame else FIRST_READ)
    decoder.feed(data)
    return bool(data)
