"""Attacks on the wire against real `chordcdn node` processes, from outside.

An attacker on the same network as a running ring (127.0.0.1 here) tries what it
can with the credentials it has, and each test counts what was lost:

1. a client certificate holder sends frames of every bad shape over mutual TLS
   (2,000-digit integers, 64-bit edges, nesting past msgpack's limit, NaN, huge
   strings, wrong lengths, maps, random bytes, an over-cap length, a frame cut
   off and then silence), random ones from Hypothesis over one long-lived link
   and then each shape by hand: error replies or a closed link;
2. a fake peer with a real node certificate gets the ring to adopt it and answers
   every call (notify first) with poison: the nodes live, drop it, and the ring
   checks clean once it is gone;
3. plaintext and certificate-less TLS clients are refused in the handshake,
   logged by address and reason, and store nothing;
4. so is a certificate from another CA; and a node with such a certificate is
   refused by our client with a clear error;
5. roles hold: a reader cannot put, a client cannot touch routing or replicas,
   and a node cannot speak for an ID its certificate does not give;
6. a renewed certificate takes effect on SIGHUP without a restart, and one with a
   new key (a new ring ID) is refused and logged;
7. a thousand idle sockets neither starve a well-behaved client nor stay open
   past the handshake timeout.

Each test ends with `attackkit.assert_survived`: the attacked node still runs,
`chordcdn ring --check` passes, it logged no traceback, and a file put before the
attack reads back whole with `chordcdn get`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
import resource
import signal
import socket
import ssl
import struct
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import msgpack
import trio
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from dht import errors, messages
from dht.identity import Role
from dht.ids import IdSpace, in_open
from dht.merkle import MAX_BLOCK
from dht.messages import NodeInfo
from dht.routing import NodeRef
from dht.tcp import TcpTransport, open_tcp_transport
from dht.tls import TlsFiles
from dht.wire import MAX_ERROR_MESSAGE, MAX_FRAME, FrameDecoder, encode_request, pack, unpack
from tools.cluster import LocalCluster
from tools.ringwalk import ring_problems, walk

from .attackkit import (
    CLOSED,
    WAIT,
    LoggedNode,
    RawConnection,
    assert_survived,
    client_context,
    client_credentials,
    frame_of,
    logged_ring,
    long_integer,
    nested,
    node_info,
    packed,
    put_bytes,
    raw_array,
    server_context,
    start_logged_node,
    stop_all,
    wait_for_log,
)
from .fuzzkit import HUGE_INTEGERS, arguments_ish, wire_values
from .processes import chordcdn, client_environment, pki

SPACE = IdSpace()
CONTENT = random.Random(20).randbytes(300_000)  # five 64 KiB leaves and a root
BIG = long_integer(2000)
NEGATIVE_BIG = long_integer(2000, sign=-1)
DEEPEST = 1023  # msgpack decodes 1024 nested arrays, the message's own included; one more is refused
FAKE_ADDRESS = "127.0.0.1:9"


def _kinds(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_kinds(sub) for sub in cls.__subclasses__()))


# Error kinds the node reports on purpose; any other kind (KeyError, TypeError…) is a handler bug.
KNOWN_KINDS = _kinds(errors.ChordError)


@dataclass
class Stage:
    """A logged ring of real node processes holding a file put before the attack."""

    nodes: list[LoggedNode]
    cid: str


@asynccontextmanager
async def attacked_ring(tmp_path: Path, count: int = 2) -> AsyncIterator[Stage]:
    async with logged_ring(tmp_path, count) as nodes:
        yield Stage(nodes, await put_bytes(nodes[0].address, CONTENT))


def files_of(name: str, role: Role) -> TlsFiles:
    return pki().files(name, role)


def node_id_of(name: str, role: Role = Role.NODE) -> int:
    node_id = pki().credentials(name, role).identity.node_id
    assert node_id is not None
    return node_id


def kind_of(message: Any) -> str | None:
    """None for a success reply, else the error kind; fails on a malformed reply."""
    assert isinstance(message, list) and len(message) == 3, message
    request_id, ok, result = message
    assert request_id is None or (isinstance(request_id, int) and 0 <= request_id < 1 << 64), message
    assert isinstance(ok, bool), message
    if ok:
        return None
    assert isinstance(result, list) and len(result) == 2 and all(isinstance(part, str) for part in result), message
    assert result[0] in KNOWN_KINDS, f"the node reported an unexpected error kind (a handler bug?): {result}"
    assert len(result[1]) <= MAX_ERROR_MESSAGE, f"an error message of {len(result[1])} characters"
    return result[0]


def request(request_id: Any, method: Any, args: Any) -> bytes:
    """A request frame with its parts encoded as given (ExtType, floats and 64-bit edges stay as they are)."""
    return frame_of(packed([request_id, method, args]))


async def routing_of(address: str) -> tuple[Any, ...]:
    info = await node_info(address)
    return info.predecessor, tuple(info.successors)


def replies_over(address: str, files: TlsFiles, data: bytes, count: int) -> list[Any]:
    """Send `data` over one mutual-TLS link with `files`' certificate; the next
    `count` replies (the link must stay open). Blocking."""
    with RawConnection.open(address, client_context(files)) as link:
        link.send(data)
        replies = [link.receive() for _ in range(count)]
    assert CLOSED not in replies, replies
    return replies


async def in_thread(into: list[Any], function: Callable[..., Any], *args: Any) -> None:
    """Run a blocking attack in a worker thread; its result goes into `into`."""
    into.append(await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True))


async def used_bytes(nodes: list[LoggedNode]) -> list[int]:
    return [(await node_info(node.address)).store["used"] for node in nodes]


# -- 1. bad frames from a client certificate ---------------------------------------------------


class Prober:
    """One long-lived mutual-TLS link to a node with a client certificate,
    reopened when the node closes it. Blocking: run it in a worker thread."""

    PING_IDS = 0x5EED_0000_0000_0000

    def __init__(self, address: str) -> None:
        self.address = address
        self.context = client_context(files_of("test-client", Role.CLIENT))
        self.link: RawConnection | None = None
        self.opened = 0
        self.kinds: Counter[str | None] = Counter()
        self._pings = itertools.count(self.PING_IDS)

    def connection(self) -> RawConnection:
        if self.link is None or self.link.closed:
            if self.link is not None:
                self.link.close()
            self.link = RawConnection.open(self.address, self.context)
            self.opened += 1
        return self.link

    def ping(self) -> None:
        """The same link still answers a well-formed request."""
        ping_id = next(self._pings)
        link = self.connection()
        link.send(encode_request(ping_id, "ping", []))
        reply = link.receive()
        assert reply is not CLOSED and reply[:2] == [ping_id, True], reply

    def answer_to(self, frame: bytes) -> Any:
        """Send one well-framed payload followed by a ping; the one reply to the
        payload (which may come after the ping's: handlers that need the network
        answer from their own task). The link must stay open."""
        link = self.connection()
        ping_id = next(self._pings)
        link.send(frame + encode_request(ping_id, "ping", []))
        replies, pinged = [], False
        while not (pinged and replies):
            message = link.receive()
            assert message is not CLOSED, "the node closed the link over a well-framed payload"
            if isinstance(message, list) and message[:2] == [ping_id, True]:
                pinged = True
            else:
                replies.append(message)
        assert len(replies) == 1, replies
        self.kinds[kind_of(replies[0])] += 1
        return replies[0]

    def close(self) -> None:
        if self.link is not None:
            self.link.close()


def payload_of(value: Any) -> bytes:
    try:
        return pack(value)
    except (ValueError, TypeError, OverflowError):  # deeper than a packer goes: send that by hand
        return nested(5000)


REQUEST_IDS = st.one_of(st.integers(min_value=0, max_value=2**64 - 1), HUGE_INTEGERS, wire_values)
METHODS = st.one_of(st.sampled_from(sorted(messages.ALLOWED)), st.text(max_size=30), wire_values)
ARGUMENTS = st.one_of(arguments_ish, wire_values)
# Requests that pass the frame and message checks, so hostile arguments reach the handlers.
HANDLED = st.tuples(st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(sorted(messages.ALLOWED)), arguments_ish)
PAYLOADS = st.one_of(
    HANDLED.map(lambda parts: payload_of(list(parts))),
    HANDLED.map(lambda parts: payload_of(list(parts))),  # twice: half the examples reach a handler
    st.tuples(REQUEST_IDS, METHODS, ARGUMENTS).map(lambda parts: payload_of(list(parts))),
    wire_values.map(payload_of),
    st.binary(max_size=256),
    st.tuples(REQUEST_IDS, METHODS, st.integers(min_value=1, max_value=5000)).map(
        lambda parts: raw_array(payload_of(parts[0]), payload_of(parts[1]), nested(parts[2]))
    ),
)


def fuzz_one_link(prober: Prober) -> None:
    """Hypothesis's random payloads (its profile bounds how many), framed right,
    over the prober's one link: each gets exactly one well-formed reply."""

    @given(PAYLOADS)
    def each(payload: bytes) -> None:
        prober.answer_to(frame_of(payload))

    each()


@dataclass(frozen=True)
class BadFrame:
    """Bytes to send, the (error kind or None for success, request ID) of each
    reply expected, and whether the node then closes the link."""

    name: str
    data: bytes
    replies: tuple[tuple[str | None, int | None], ...]
    closes: bool = False


def bad_frames(random_bytes: bytes) -> list[BadFrame]:
    short = packed([21, "ping", []])  # 8 bytes; its prefix will say 5
    deep_maps = b"\x81\xa1k" * 3000 + b"\xc0"
    return [
        # 2,000-digit integers (extension type 1 far past its 40-byte cap) in every position
        BadFrame("request id of 2000 digits", request(BIG, "ping", []), (("ProtocolError", None),)),
        BadFrame("method of 2000 digits", request(1, BIG, []), (("ProtocolError", None),)),
        BadFrame("args of 2000 digits", request(2, "ping", BIG), (("ProtocolError", None),)),
        BadFrame("step key of 2000 digits", request(3, "step", [BIG]), (("ProtocolError", None),)),
        BadFrame("negative 2000 digits", request(4, "lookup", [NEGATIVE_BIG]), (("ProtocolError", None),)),
        BadFrame("a 41-byte integer", request(5, "step", [msgpack.ExtType(1, b"\x01" + bytes(40))]), (("ProtocolError", None),)),
        BadFrame("a 40-byte integer outside the ring", frame_of(pack([6, "step", [2**318]])), (("BadRequest", 6),)),
        BadFrame("a 33-byte integer, 2^256", frame_of(pack([7, "step", [2**256]])), (("BadRequest", 7),)),
        # plain msgpack integers at the 64-bit edges
        BadFrame("request id 2^64-1", request(2**64 - 1, "ping", []), ((None, 2**64 - 1),)),
        BadFrame("request id 2^63", request(2**63, "ping", []), ((None, 2**63),)),
        BadFrame("request id -2^63", request(-(2**63), "ping", []), (("ProtocolError", None),)),
        BadFrame("request id -1", request(-1, "ping", []), (("ProtocolError", None),)),
        BadFrame("step key 2^64-1", request(8, "step", [2**64 - 1]), ((None, 8),)),
        BadFrame("step key -2^63", request(9, "step", [-(2**63)]), (("BadRequest", 9),)),
        BadFrame("dead IDs at both edges", request(10, "step", [0, [2**64 - 1, -(2**63)]]), (("BadRequest", 10),)),
        # nesting: past msgpack's limit, and just inside it (reaching the handlers)
        BadFrame("args nested 5000 deep", frame_of(raw_array(packed(11), packed("step"), nested(5000))), (("ProtocolError", None),)),
        BadFrame("a message nested 5000 deep", frame_of(nested(5000)), (("ProtocolError", None),)),
        BadFrame("maps nested 3000 deep", frame_of(raw_array(packed(12), packed("step"), deep_maps)), (("ProtocolError", None),)),
        BadFrame(f"step key nested {DEEPEST} deep", frame_of(raw_array(packed(13), packed("step"), b"\x91" + nested(DEEPEST - 1))), (("BadRequest", 13),)),
        BadFrame(f"lookup key nested {DEEPEST} deep", frame_of(raw_array(packed(14), packed("lookup"), nested(DEEPEST))), (("BadRequest", 14),)),
        BadFrame(f"request id nested {DEEPEST - 1} deep", frame_of(raw_array(nested(DEEPEST - 1), packed("ping"), packed([]))), (("ProtocolError", None),)),
        # NaN and infinities
        BadFrame("NaN request id", request(math.nan, "ping", []), (("ProtocolError", None),)),
        BadFrame("infinite method", request(15, math.inf, []), (("ProtocolError", 15),)),
        BadFrame("NaN step key", request(16, "step", [math.nan]), (("BadRequest", 16),)),
        BadFrame("-inf dead ID", request(17, "step", [1, [-math.inf]]), (("BadRequest", 17),)),
        BadFrame("NaN lookup key", request(18, "lookup", [math.nan]), (("BadRequest", 18),)),
        # huge strings and bytes
        BadFrame("a method of a million characters", request(19, "m" * 1_000_000, []), (("BadRequest", 19),)),
        BadFrame("a step key of a million characters", request(20, "step", ["k" * 1_000_000]), (("BadRequest", 20),)),
        BadFrame("a block one byte too big", request(21, "put_block", [bytes(32), bytes(MAX_BLOCK + 1)]), (("BadRequest", 21),)),
        # wrong lengths: of the message, of the arguments, inside the msgpack
        BadFrame("two elements", frame_of(packed([22, "ping"])), (("ProtocolError", 22),)),
        BadFrame("five elements", frame_of(packed([23, "ping", [], 0, 0])), (("ProtocolError", 23),)),
        BadFrame("a ring position not held here", frame_of(packed([31, "ping", [], 9])), (("BadRequest", 31),)),
        BadFrame("a ring position out of range", frame_of(packed([32, "ping", [], 64])), (("ProtocolError", 32),)),
        BadFrame("step with three arguments", request(24, "step", [1, [], 3]), (("BadRequest", 24),)),
        BadFrame("array header of 3 holding 2", frame_of(b"\x93" + packed(25) + packed("ping")), (("ProtocolError", None),)),
        BadFrame("string header past the frame", frame_of(b"\x93\x1a\xd9\xffping\x90"), (("ProtocolError", None),)),
        BadFrame("empty payload", frame_of(b""), (("ProtocolError", None),)),
        BadFrame("trailing bytes", frame_of(packed([26, "ping", []]) + b"\x00"), (("ProtocolError", None),)),
        # maps where lists belong, and an unknown extension type
        BadFrame("a map for the message", frame_of(packed({"id": 27, "method": "ping", "args": []})), (("ProtocolError", None),)),
        BadFrame("a map for the args", request(28, "ping", {"a": 1}), (("ProtocolError", 28),)),
        BadFrame("a map for the key", request(29, "step", [{"key": 1}]), (("BadRequest", 29),)),
        BadFrame("unknown extension type", request(30, "ping", [msgpack.ExtType(5, b"x")]), (("ProtocolError", None),)),
        # random bytes, framed
        BadFrame("random bytes", frame_of(random_bytes), (("ProtocolError", None),)),
        # lengths that break framing: the node answers what it can, then closes
        BadFrame("a length prefix over the cap", struct.pack(">I", MAX_FRAME + 1), (("FrameTooLarge", None),), closes=True),
        BadFrame("unframed random bytes", b"\xff" * 64, (("FrameTooLarge", None),), closes=True),
        BadFrame(
            "a length prefix shorter than its payload", struct.pack(">I", len(short) - 3) + short + b"\xff",
            (("ProtocolError", None), ("FrameTooLarge", None)), closes=True,
        ),
    ]


def send_bad_frames(prober: Prober, frames: list[BadFrame]) -> None:
    for frame in frames:
        link = prober.connection()
        link.send(frame.data)
        got = link.drain() if frame.closes else [link.receive() for _ in frame.replies]
        assert CLOSED not in got, f"{frame.name}: the node closed the link"
        assert tuple((kind_of(message), message[0]) for message in got) == frame.replies, (frame.name, got)
        if frame.closes:
            assert link.closed
        prober.ping()  # on the same link, or on a new one after a close


def cut_off_then_silence(address: str) -> tuple[list[Any], float]:
    """A frame announced at 1000 bytes, 100 sent, then nothing: what the node sends
    back before closing the link, and after how long (seconds)."""
    with RawConnection.open(address, client_context(files_of("test-client", Role.CLIENT))) as link:
        started = time.monotonic()
        link.send(struct.pack(">I", 1000) + b"x" * 100)
        got = link.drain(timeout=40)
        return got, time.monotonic() - started


async def test_bad_frames_from_a_client_certificate_get_errors_or_a_close(tmp_path: Path) -> None:
    async with attacked_ring(tmp_path) as stage:
        victim = stage.nodes[0]
        prober = Prober(victim.address)
        stalled: list[tuple[list[Any], float]] = []
        async with trio.open_nursery() as nursery:
            # The cut-off frame waits out the node's frame timeout (10 s, no flag)
            # while everything else runs, the final checks included.
            nursery.start_soon(in_thread, stalled, cut_off_then_silence, victim.address)
            try:
                await trio.to_thread.run_sync(fuzz_one_link, prober)
                await trio.to_thread.run_sync(send_bad_frames, prober, bad_frames(random.Random(7).randbytes(200)))
            finally:
                prober.close()
            handled = prober.kinds["BadRequest"] + prober.kinds["Forbidden"] + prober.kinds[None]
            assert prober.kinds["ProtocolError"] and handled, f"the fuzz reached the parser and the handlers: {prober.kinds}"
            closing = sum(frame.closes for frame in bad_frames(b""))
            assert prober.opened == 1 + closing, "one link for everything, reopened only after the node closed it"
            await assert_survived(victim, stage.cid, CONTENT)
        got, after = stalled[0]
        assert got == [], "a cut-off frame got a reply"
        assert after >= 5.0, f"the stalled link was closed after {after:.1f} s, before any frame timeout"
        assert victim.alive() and (await node_info(victim.address)).me.address == victim.address


# -- 2. a fake peer with a real node certificate -----------------------------------------------


def reply_frame(request_id: bytes, ok: bytes, result: bytes) -> bytes:
    return frame_of(raw_array(request_id, ok, result))


def ok_reply(result: Any) -> Callable[[int, str], bytes]:
    """A success reply carrying `result` (wide integers as extension type 1)."""
    return lambda request_id, address: reply_frame(packed(request_id), packed(True), pack(result))


# What the liar answers the victim's calls with, in turn; `address` is the liar's own.
POISONS: dict[str, Callable[[int, str], bytes]] = {
    "a 2000-digit result": ok_reply(BIG),
    "a 2000-digit request id": lambda rid, address: reply_frame(packed(BIG), packed(True), packed(None)),
    "a 2000-digit predecessor ID": lambda rid, address: reply_frame(packed(rid), packed(True), packed([[address, BIG], []])),
    "a negative 2000-digit successor ID": lambda rid, address: reply_frame(packed(rid), packed(True), packed([None, [[address, NEGATIVE_BIG]]])),
    "a predecessor ID past the ring": lambda rid, address: frame_of(pack([rid, True, [[address, 2**256], []]])),
    "a result nested 5000 deep": lambda rid, address: reply_frame(packed(rid), packed(True), nested(5000)),
    f"successors nested {DEEPEST - 2} deep": lambda rid, address: reply_frame(packed(rid), packed(True), raw_array(packed(None), nested(DEEPEST - 2))),
    "a NaN result": ok_reply(math.nan),
    "a NaN predecessor ID": lambda rid, address: frame_of(packed([rid, True, [[address, math.nan], []]])),
    "an infinite successor ID": lambda rid, address: frame_of(packed([rid, True, [None, [[address, math.inf]]]])),
    "a string": ok_reply("owner"),
    "a map": ok_reply({"predecessor": None, "successors": []}),
    "one element": ok_reply([None]),
    "400 successors": lambda rid, address: frame_of(packed([rid, True, [None, [[address, 1]] * 400]])),
    "an address of 100 kB": lambda rid, address: frame_of(packed([rid, True, [["x" * 100_000, 1], []]])),
    "an error with a 2000-digit message": lambda rid, address: reply_frame(packed(rid), packed(False), raw_array(packed("Boom"), packed(BIG))),
    "an error with a 100 kB message": lambda rid, address: frame_of(packed([rid, False, ["Boom" * 25_000, "m" * 100_000]])),
    f"an error nested {DEEPEST - 1} deep": lambda rid, address: reply_frame(packed(rid), packed(False), nested(DEEPEST - 1)),
    "ok not a boolean": lambda rid, address: frame_of(packed([rid, 1, None])),
    "two elements": lambda rid, address: frame_of(packed([rid, True])),
    "not msgpack": lambda rid, address: frame_of(b"\xc1\xc1\xc1"),
    "a length over the cap": lambda rid, address: struct.pack(">I", 2**31) + b"x" * 16,
}
# Replies no frame parser accepts (the rest parse, and only the method's reply
# decoder refuses them): the caller's transport must hang up after each.
UNREADABLE = {
    "a 2000-digit result", "a 2000-digit request id", "a 2000-digit predecessor ID", "a negative 2000-digit successor ID",
    "a result nested 5000 deep", "an error with a 2000-digit message", f"an error nested {DEEPEST - 1} deep",
    "ok not a boolean", "two elements", "not msgpack", "a length over the cap",
}


def common_name(der: bytes) -> str:
    return str(x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class Liar:
    """A fake ring node: a raw TLS server with a real node certificate that
    answers every call with the next of POISONS (per caller and method), and a
    client that keeps telling the ring nodes it is their neighbour."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.files = files_of(name, Role.NODE)
        self.id = node_id_of(name)
        self.address = ""
        self.calls: Counter[tuple[str, str]] = Counter()  # (caller's name, method) → calls answered
        self.served: dict[tuple[str, str], set[str]] = {}  # (caller's name, method) → poisons served
        self.adopted: Counter[str] = Counter()  # node address → times it took the liar as its successor
        self.hung_up: dict[tuple[str, str], set[str]] = {}  # (caller, method) → UNREADABLE replies it hung up on
        self.kept_open: set[str] = set()  # UNREADABLE replies after which the caller did not hang up

    def ref(self) -> list[Any]:
        return [self.address, self.id]

    async def run(self, targets: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, self.serve, 0, host="127.0.0.1"))
            self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            for target in targets:
                nursery.start_soon(self.push, target)
            task_status.started()

    async def serve(self, stream: trio.SocketStream) -> None:
        link = trio.SSLStream(stream, server_context(self.files), server_side=True)
        try:
            with trio.fail_after(WAIT):
                await link.do_handshake()
            caller = common_name(link.getpeercert(binary_form=True))
            decoder = FrameDecoder()
            while data := await link.receive_some():
                decoder.feed(data)
                while (payload := decoder.next_payload()) is not None:
                    request_id, method, _ = unpack(payload)
                    name = self.next_poison(caller, method)
                    await link.send_all(POISONS[name](request_id, self.address))
                    if name in UNREADABLE:
                        await self.expect_hang_up(link, (caller, method), name)
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the victim hung up on us
        finally:
            await trio.aclose_forcefully(link)

    async def expect_hang_up(self, link: trio.SSLStream[trio.SocketStream], key: tuple[str, str], name: str) -> None:
        """Answer nothing more; note whether the caller hangs up within 3 s."""
        with trio.move_on_after(3):
            try:
                while await link.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass
            self.hung_up.setdefault(key, set()).add(name)
            return
        self.kept_open.add(name)

    def next_poison(self, caller: str, method: str) -> str:
        key = (caller, method)
        name = list(POISONS)[self.calls[key] % len(POISONS)]
        self.calls[key] += 1
        self.served.setdefault(key, set()).add(name)
        return name

    async def push(self, target: str) -> None:
        """Every 0.1 s, notify `target` naming ourselves and ask it to take us as
        its successor; reconnect whenever the link breaks."""
        host, port = target.rsplit(":", 1)
        while True:
            try:
                link = trio.SSLStream(await trio.open_tcp_stream(host, int(port)), client_context(self.files))
            except OSError:
                await trio.sleep(0.1)
                continue
            try:
                await self.push_over(link, target)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                await trio.sleep(0.1)
            finally:
                await trio.aclose_forcefully(link)

    async def push_over(self, link: trio.SSLStream[trio.SocketStream], target: str) -> None:
        decoder, requests = FrameDecoder(), itertools.count(1)
        while True:
            with trio.fail_after(WAIT):
                notify, consider = next(requests), next(requests)
                await link.send_all(
                    encode_request(notify, "notify", [self.ref()]) + encode_request(consider, "consider_successor", [self.ref()])
                )
                for _ in range(2):  # replies come in the order they are ready: match them by request id
                    while (payload := decoder.next_payload()) is None:
                        if not (data := await link.receive_some()):
                            raise trio.BrokenResourceError(f"{target} hung up")
                        decoder.feed(data)
                    request, ok, result = unpack(payload)
                    if ok and request == consider and result is True:
                        self.adopted[target] += 1
            await trio.sleep(0.1)


def liar_named(routing: tuple[Any, ...], liar: Liar) -> bool:
    predecessor, successors = routing
    return any(node is not None and node.id == liar.id for node in (predecessor, *successors))


async def strangers_in(client: TcpTransport, address: str, known: set[NodeRef]) -> set[NodeRef]:
    """The nodes the node at `address` routes by (predecessor, successors, fingers) that are not `known`."""
    info = NodeInfo.from_wire(await client.call(address, "info", [], timeout=WAIT))
    return {node for node in (info.predecessor, *info.successors, *info.fingers) if node is not None} - known


async def test_a_fake_peer_answering_with_poison_is_dropped_and_the_ring_heals(tmp_path: Path) -> None:
    async with attacked_ring(tmp_path) as stage, open_tcp_transport(None, tls=client_credentials()) as client:
        liar = Liar(f"liar-{tmp_path.name}")
        first, second = stage.nodes
        # The victim is the node the liar falls just after: it takes the liar as its
        # successor and calls notify on it every stabilize round.
        info = await node_info(first.address)
        victim, other = (first, second) if in_open(liar.id, info.me.id, info.successor.id) else (second, first)
        known = {info.me, info.successor}
        deadline = trio.current_time() + 30
        async with trio.open_nursery() as nursery:
            await nursery.start(liar.run, [victim.address, other.address])
            known.add(NodeRef(liar.id, liar.address))
            started = trio.current_time()
            key = (victim.name, "notify")
            # Until the victim has called notify on the liar, got every poison back and
            # hung up after each unreadable one, and for at least 5 s of maintenance
            # rounds: both nodes live, and nothing the liar made up enters their routing.
            while (
                trio.current_time() - started < 5
                or liar.served.get(key, set()) != set(POISONS)
                or liar.hung_up.get(key, set()) != UNREADABLE
            ):
                assert trio.current_time() < deadline, f"the victim's notify calls got {liar.served.get(key)}, hung up on {liar.hung_up.get(key)}"
                assert not liar.kept_open, f"the nodes kept talking over a link after these replies: {liar.kept_open}"
                for node in stage.nodes:
                    assert node.alive(), f"{node.address} died under the liar:\n{node.log_text()[-3000:]}"
                    assert not await strangers_in(client, node.address, known), "a made-up node entered the routing"
                await trio.sleep(0.1)
            assert liar.adopted[victim.address], "the victim never took the liar as its successor"
            nursery.cancel_scope.cancel()
        # The liar is gone: both nodes forget it and the ring closes again without it.
        with trio.fail_after(20):
            while any([liar_named(await routing_of(node.address), liar) for node in stage.nodes]):
                await trio.sleep(0.1)
        assert "failed unexpectedly" not in victim.log_text() + other.log_text()
        assert "Traceback" not in other.log_text()
        await assert_survived(victim, stage.cid, CONTENT)
        assert other.alive()


# -- 3, 4. links without a cluster certificate -------------------------------------------------


JUNK = [random.Random(seed).randbytes(4000) for seed in range(3)]


def junk_puts() -> bytes:
    """Valid put_block requests of junk blocks (each stored if it arrived on a writer's link)."""
    return b"".join(encode_request(index, "put_block", [hashlib.sha256(block).digest(), block]) for index, block in enumerate(JUNK))


@dataclass(frozen=True)
class Refusal:
    port: int  # our end of the refused link, as the node logs it
    received: bytes  # what came back (decrypted, on TLS), before the node closed the link


def put_junk_over(address: str, context: ssl.SSLContext | None) -> Refusal:
    """Connect (plaintext when `context` is None), send junk_puts and read until
    the node closes the link (failing if it keeps it open past WAIT)."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    local_port = sock.getsockname()[1]
    received = b""
    try:
        if context is not None:
            sock = context.wrap_socket(sock)  # TLS 1.3: the client's side completes; the node decides after
        sock.sendall(junk_puts())
        while data := sock.recv(65536):
            received += data
    except TimeoutError:
        raise AssertionError(f"the node kept a link it should refuse open for {WAIT} s") from None
    except OSError:  # a reset, a broken pipe, a TLS alert: refused
        pass
    finally:
        sock.close()
    return Refusal(local_port, received)


def assert_no_reply(refusal: Refusal) -> None:
    """Nothing but, perhaps, a plaintext TLS alert record came back: no frame, no acknowledgement."""
    assert refusal.received == b"" or refusal.received[:1] == b"\x15", refusal.received[:64]


async def assert_junk_is_storable(victim: LoggedNode, used_before: int) -> None:
    """Control: the same frames over a client's mutual-TLS link do store the junk,
    so it was the handshake, not the frames, that kept it out before."""
    replies = await trio.to_thread.run_sync(replies_over, victim.address, files_of("test-client", Role.CLIENT), junk_puts(), len(JUNK))
    assert replies == [[index, True, True] for index in range(len(JUNK))]
    assert (await node_info(victim.address)).store["used"] == used_before + sum(map(len, JUNK))


async def test_links_without_a_certificate_are_refused_logged_and_store_nothing(tmp_path: Path) -> None:
    async with attacked_ring(tmp_path) as stage:
        victim = stage.nodes[0]
        before = await used_bytes(stage.nodes)
        plaintext = await trio.to_thread.run_sync(put_junk_over, victim.address, None)
        no_certificate = await trio.to_thread.run_sync(put_junk_over, victim.address, client_context(None))
        assert_no_reply(plaintext)
        assert_no_reply(no_certificate)
        assert await used_bytes(stage.nodes) == before
        line = await wait_for_log(victim, f"refused a connection from 127.0.0.1:{plaintext.port}: ")
        assert "not TLS" in line, line
        line = await wait_for_log(victim, f"refused a connection from 127.0.0.1:{no_certificate.port}: ")
        assert "no client certificate" in line, line
        await assert_junk_is_storable(victim, before[0])
        await assert_survived(victim, stage.cid, CONTENT)


async def started_into(into: list[LoggedNode], log_dir: Path, cluster: LocalCluster) -> None:
    into.append(await start_logged_node(log_dir, cluster=cluster))


async def test_certificates_from_another_ca_are_refused_both_ways(tmp_path: Path) -> None:
    other_ca = LocalCluster(tmp_path / "other-ca")
    foreign: list[LoggedNode] = []  # a node whose certificate comes from another CA, started alongside the ring
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(started_into, foreign, tmp_path, other_ca)
            async with attacked_ring(tmp_path) as stage:
                victim = stage.nodes[0]
                before = await used_bytes(stage.nodes)
                refusals = [
                    await trio.to_thread.run_sync(put_junk_over, victim.address, client_context(other_ca.files(name, role), verify_server=False))
                    for name, role in (("mallory", Role.CLIENT), ("mallory-node", Role.NODE))
                ]
                for refusal in refusals:
                    assert_no_reply(refusal)
                    line = await wait_for_log(victim, f"refused a connection from 127.0.0.1:{refusal.port}: ")
                    assert "certificate verify failed" in line and "not from this cluster's CA" in line, line
                assert await used_bytes(stage.nodes) == before
                # The other way round: our client reaches a node of another CA.
                with trio.fail_after(30):
                    while not foreign:
                        await trio.sleep(0.05)
                address = foreign[0].address
                result = await chordcdn("ring", "--via", address, "--check")
                error = result.stderr.decode()
                assert result.returncode == 3, error
                assert error.startswith(f"chordcdn ring: cannot reach {address}: TLS handshake with {address} failed: "), error
                assert "certificate verify failed" in error and "not from this cluster's CA" in error, error
                assert "Traceback" not in error and len(error.splitlines()) == 1, error
                line = await wait_for_log(foreign[0], "refused a connection from 127.0.0.1:")
                assert "unknown ca" in line, line  # our client hung up on it: its certificate is not from our CA
                assert foreign[0].alive()
                await assert_junk_is_storable(victim, before[0])
                await assert_survived(victim, stage.cid, CONTENT)
    finally:
        await stop_all(foreign)


# -- 5. roles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    method: str
    args: list[Any]
    says: str | None  # what the Forbidden reply's message must say; None: a control call that must succeed


NODES_ONLY = "needs a node certificate; client 'test-client' may not call it"
ONLY_ITSELF = "may only name itself"


async def attempt_all(address: str, files: TlsFiles, attempts: list[Attempt]) -> None:
    """Every attempt over one mutual-TLS link with `files`' certificate gets a
    Forbidden reply saying why (a control attempt: a success reply)."""
    frames = b"".join(encode_request(index, attempt.method, attempt.args) for index, attempt in enumerate(attempts))
    replies = await trio.to_thread.run_sync(replies_over, address, files, frames, len(attempts))
    for reply in sorted(replies, key=lambda reply: reply[0]):
        attempt = attempts[reply[0]]
        if attempt.says is None:
            assert kind_of(reply) is None, (attempt, reply)
        else:
            assert kind_of(reply) == "Forbidden" and attempt.says in reply[2][1], (attempt, reply)


async def test_roles_hold_against_a_running_node(tmp_path: Path) -> None:
    async with attacked_ring(tmp_path) as stage:
        victim, other = stage.nodes
        me, peer = (await node_info(victim.address)).me, (await node_info(other.address)).me
        routing = await routing_of(victim.address)
        used = await used_bytes(stage.nodes)
        block = b"a reader may not store this"
        key, stored = hashlib.sha256(block).digest(), bytes.fromhex(stage.cid)

        # A reader (an edge's certificate) cannot put: not through the command, not raw.
        source = tmp_path / "from-a-reader.bin"
        source.write_bytes(block)
        result = await chordcdn("put", str(source), "--via", victim.address, env=client_environment("test-reader", Role.READER))
        assert result.returncode == 2, result.stdout  # refused before any connection: bad usage
        assert b"needs a client or node certificate" in result.stderr and b"Traceback" not in result.stderr, result.stderr
        await attempt_all(victim.address, files_of("test-reader", Role.READER), [
            Attempt("put_block", [key, block], "needs a client or node certificate"),
            Attempt("prove_blocks", [bytes(16), [stored]], "needs a client or node certificate"),
            Attempt("get_block", [stored], None),
        ])

        # A client cannot touch routing or replicas, even naming its own ID (the one its key gives);
        # it may challenge a holder for proofs of possession (an origin auditing what it published).
        myself = [FAKE_ADDRESS, node_id_of("test-client", Role.CLIENT)]
        await attempt_all(victim.address, files_of("test-client", Role.CLIENT), [
            Attempt("notify", [myself], NODES_ONLY),
            Attempt("consider_successor", [myself], NODES_ONLY),
            Attempt("successor_leaving", [myself, [[FAKE_ADDRESS, (me.id + 1) % SPACE.size]]], NODES_ONLY),
            Attempt("predecessor_leaving", [myself, [FAKE_ADDRESS, (me.id - 1) % SPACE.size]], NODES_ONLY),
            Attempt("prove_blocks", [bytes(16), [stored]], None),
            Attempt("digests", [me.id, me.id, 4], NODES_ONLY),
            Attempt("list_keys", [me.id, me.id], NODES_ONLY),
            Attempt("ping", [], None),
        ])

        # A node cannot speak for an ID its certificate does not give: not a place it
        # would like (just before or after the victim), not the other node's.
        impostor = f"impostor-{tmp_path.name}"
        assert node_id_of(impostor) not in {(me.id - 1) % SPACE.size, (me.id + 1) % SPACE.size, peer.id}
        await attempt_all(victim.address, files_of(impostor, Role.NODE), [
            Attempt("notify", [[FAKE_ADDRESS, (me.id - 1) % SPACE.size]], ONLY_ITSELF),
            Attempt("notify", [peer.to_wire()], ONLY_ITSELF),
            Attempt("consider_successor", [[FAKE_ADDRESS, (me.id + 1) % SPACE.size]], ONLY_ITSELF),
            Attempt("successor_leaving", [peer.to_wire(), []], ONLY_ITSELF),
            Attempt("predecessor_leaving", [peer.to_wire(), None], ONLY_ITSELF),
            Attempt("digests", [me.id, me.id, 4], None),  # the role is right: only the ID was wrong
        ])

        assert await routing_of(victim.address) == routing
        assert await used_bytes(stage.nodes) == used
        await assert_survived(victim, stage.cid, CONTENT)


# -- 6. certificate renewal -------------------------------------------------------------------


def served_serial(address: str) -> int:
    """The serial number of the certificate the node shows a new link. Blocking."""
    with RawConnection.open(address, client_context(files_of("test-client", Role.CLIENT))) as link:
        der = link.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    return x509.load_der_x509_certificate(der).serial_number


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def reissue(name: str, *flags: str) -> None:
    result = await chordcdn("cluster", "issue", str(pki().directory), "--role", "node", "--name", name, *flags)
    assert result.returncode == 0, result.stderr


async def test_a_renewed_certificate_takes_effect_on_sighup_and_a_new_key_is_refused(tmp_path: Path) -> None:
    async with attacked_ring(tmp_path) as stage:
        node = stage.nodes[0]
        files = files_of(node.name, Role.NODE)
        key, node_id, pid = files.key.read_bytes(), (await node_info(node.address)).me.id, node.process.pid
        original = file_serial(files.cert)
        assert await trio.to_thread.run_sync(served_serial, node.address) == original

        await reissue(node.name)  # the same key: the same ring ID
        renewed = file_serial(files.cert)
        assert renewed != original and files.key.read_bytes() == key
        node.process.send_signal(signal.SIGHUP)
        with trio.fail_after(WAIT):
            while await trio.to_thread.run_sync(served_serial, node.address) != renewed:
                await trio.sleep(0.05)
        assert node.alive() and node.process.pid == pid
        assert (await node_info(node.address)).me.id == node_id

        await reissue(node.name, "--new-key")  # a new key would move the node in the ring
        assert files.key.read_bytes() != key
        node.process.send_signal(signal.SIGHUP)
        line = await wait_for_log(node, "keeping the current credentials")
        assert "ERROR" in line and "another key" in line and "another ring ID" in line, line
        assert await trio.to_thread.run_sync(served_serial, node.address) == renewed
        assert (await node_info(node.address)).me.id == node_id
        await assert_survived(node, stage.cid, CONTENT)


# -- 7. a thousand idle sockets ---------------------------------------------------------------


IDLE = 1000
HANDSHAKE_TIMEOUT = 5.0  # the node's default; `chordcdn node` has no flag for it


def open_idle(address: str, count: int) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=WAIT)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def closed_count(sockets: list[socket.socket]) -> int:
    """How many of the sockets the node has closed (EOF or reset)."""
    closed = 0
    for sock in sockets:
        try:
            data = sock.recv(1)
        except BlockingIOError:
            continue
        except OSError:
            closed += 1
            continue
        assert data == b"", "the node sent bytes on a link that never said hello"
        closed += 1
    return closed


async def test_a_thousand_idle_sockets_starve_no_one_and_are_closed_after_the_handshake_timeout(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard >= IDLE + 200, f"this test needs {IDLE + 200} open files; the hard limit is {hard}"
    async with attacked_ring(tmp_path) as stage:
        victim = stage.nodes[0]
        started = trio.current_time()
        idle = await trio.to_thread.run_sync(open_idle, victim.address, IDLE)
        first_closed: list[float] = []
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    with trio.fail_after(HANDSHAKE_TIMEOUT + 25):
                        while (closed := closed_count(idle)) < IDLE:
                            if closed and not first_closed:
                                first_closed.append(trio.current_time())
                            await trio.sleep(0.1)
                    first_closed.append(trio.current_time())

                nursery.start_soon(watch)
                # While they are open, a well-behaved client is served: a ping and a ring
                # walk (what `ring --check` does) in this process, then the command itself.
                async with open_tcp_transport(None, tls=client_credentials()) as client:
                    with trio.fail_after(WAIT):
                        pong = messages.ping_reply(await client.call(victim.address, "ping", [], timeout=WAIT), SPACE)
                        view = await walk(client, victim.address)
                served = trio.current_time()
                assert pong.address == victim.address and len(view.nodes) == 2 and not ring_problems(view)
                result = await chordcdn("ring", "--via", victim.address, "--check")
                assert result.returncode == 0, result.stderr
        finally:
            for sock in idle:
                sock.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert served < first_closed[0], "the well-behaved client was served only after the idle sockets were gone"
        assert first_closed[0] - started >= HANDSHAKE_TIMEOUT - 0.5, "idle sockets were closed before the handshake timeout"
        line = await wait_for_log(victim, "refused a connection from 127.0.0.1:")
        assert f"no TLS handshake within {HANDSHAKE_TIMEOUT:g} s" in line, line
        await assert_survived(victim, stage.cid, CONTENT)
