"""Where an edge's misses go: other edges, a parent, the origin (HTTP), the DHT (CID).

Owns talking upstream and which request fields go there. Each source answers
with an `Answer`: status, end-to-end header fields, the body's size when known,
and its body as chunks. HTTP goes through one pooled client (`client`); DHT reads verify every block
(the DhtClient does) and fetch only the leaves a range needs. The ring is entered
through a small set of contacts (`DhtSource`): the configured nodes and members
they name; when one fails, the next takes over within the same request.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import trio

from dht.client import DhtClient, LeafSource
from dht.errors import ChordError, LookupFailed, TransportError
from dht.messages import NodeInfo
from dht.transport import Transport

from .client import ClientError, Content, HttpClient, Interim
from .policy import end_to_end, field_values

log = logging.getLogger(__name__)

EDGE_HEADER = "X-Chordcdn-Edge"  # marks a request one edge sends another
# Request fields never passed on as they came: the connection's own, and framing
# that the upstream client sets for the body it sends.
NOT_PASSED = frozenset({"host", "content-length", "expect"})
# Also not passed when an edge fetches a whole object for its cache: it makes its
# own conditionals and answers ranges itself.
NOT_FORWARDED = NOT_PASSED | {"range", "if-range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since"}

Sink = Callable[[bytes], Awaitable[None]]
T = TypeVar("T")


class UpstreamError(Exception):
    """No upstream gave an answer. `status` is 502 (unreachable, broken) or 504
    (timed out); `unsent` says the request never left (the connection failed), so
    trying elsewhere cannot repeat it."""

    def __init__(self, status: int, message: str, unsent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.unsent = unsent


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    size: int | None
    tier: str
    chunks: Callable[[], AsyncIterator[bytes]]

    async def pump(self, sink: Sink) -> None:
        async for chunk in self.chunks():
            await sink(chunk)


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


def bodiless(status: int, headers: list[tuple[str, str]], tier: str) -> Answer:
    return Answer(status, headers, 0, tier, _no_chunks)


def passed_fields(headers: list[tuple[str, str]], via: str, dropped: frozenset[str] = NOT_PASSED) -> list[tuple[str, str]]:
    """A request's fields as sent upstream: end-to-end ones only (RFC 9110 §7.6.1),
    without `dropped`, and with this proxy added to Via (§7.6.3)."""
    return [*((k, v) for k, v in end_to_end(headers) if k.lower() not in dropped), ("Via", via)]


class HttpUpstream:
    """One pooled client for every HTTP upstream of an edge."""

    def __init__(self, timeout: float) -> None:
        self.client = HttpClient(timeout)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(
        self, method: str, url: str, fields: list[tuple[str, str]], tier: str, content: Content = b"", on_interim: Interim | None = None
    ) -> tuple[Answer, Callable[[], Awaitable[None]]]:
        """Send a request; return the answer (its body not yet read) and a close
        function the caller must await. Interim 1xx answers go to `on_interim`."""
        try:
            response = await self.client.request(method, url, fields, content, on_interim)
        except ClientError as exc:
            raise _upstream_error(exc, f"{tier} {url}") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.chunks():
                    yield chunk
            except ClientError as exc:
                raise _upstream_error(exc, f"{tier} {url}: body") from None

        lengths = set(field_values(response.headers, "content-length"))
        size = int(next(iter(lengths))) if len(lengths) == 1 and next(iter(lengths)).isdigit() else None
        if response.status in (204, 304):
            size = 0
        fields = [(k, v) for k, v in end_to_end(response.headers) if k.lower() != "content-length"]
        return Answer(response.status, fields, size, tier, chunks), response.close

    async def head(self, url: str, fields: list[tuple[str, str]]) -> Answer:
        """A HEAD's answer: status and fields (Content-Length kept), no body."""
        try:
            response = await self.client.request("HEAD", url, fields)
        except ClientError as exc:
            raise _upstream_error(exc, f"origin {url}") from None
        await response.close()
        return bodiless(response.status, end_to_end(response.headers), "origin")


def _upstream_error(exc: ClientError, what: str) -> UpstreamError:
    return UpstreamError(504 if exc.timed_out else 502, f"{what}: {exc}", unsent=exc.unsent)


DHT_CONTACTS = 8  # ring nodes an edge keeps as contacts, the configured ones included
ENTRY_TIMEOUT = 2.0  # seconds a contact has to answer `info` before the next one is tried
CONTACT_REFRESH = 10.0  # seconds between asking a contact who its neighbours are now
CONTACT_FAILURES = (TransportError, LookupFailed)  # the way into the ring failed, not the content


class RingUnreachable(ChordError):
    """No contact led into the ring: each one failed, or the deadline passed first.
    It says nothing of the content, which the ring may well hold."""


@dataclass(eq=False)
class _Contact:
    """A ring node the edge may enter the ring through: one named by `--dht`, or one
    another contact named (then called with the ID its certificate must prove)."""

    address: str
    node_id: int | None = None
    configured: bool = False
    failed_at: float = -math.inf  # when it last failed; -inf while it works
    client: DhtClient | None = None
    entering: trio.Lock = field(default_factory=trio.Lock)  # one `info` at a time makes its client


class DhtSource:
    """Bodies by CID from the ring, entered through a small set of contacts: the
    configured nodes, and ring members they name (successors, predecessor, fingers),
    at most `capacity` in all. A contact's client is made on first use, so an edge
    may start before its nodes. A request whose contact fails (unreachable, or no
    route through it) goes on through the next contact within its own deadline; an
    answer that the ring lacks a block is passed on as it is and costs no contact."""

    def __init__(self, transport: Transport, contacts: str | Sequence[str], timeout: float, capacity: int = DHT_CONTACTS) -> None:
        addresses = ring_addresses(contacts)
        if not addresses:
            raise ValueError("a DhtSource needs at least one ring node address")
        self.transport = transport
        self.timeout = timeout
        self.capacity = max(capacity, len(addresses))
        self.contacts = [_Contact(address, configured=True) for address in addresses]

    async def size_of(self, cid: str) -> int:
        """The file's size from its root block. BlockNotFound (a ChordError) when the
        ring lacks it; RingUnreachable when no contact led into the ring in time."""
        with trio.move_on_after(self.timeout):
            return (await self._through_contacts(lambda contact, client: client.stat(cid))).size
        raise RingUnreachable(f"CID {cid[:16]}…: no answer from the ring within {self.timeout:g}s")

    async def pump(self, cid: str, sink: Sink, start: int = 0, end: int | None = None, fallback: LeafSource | None = None) -> None:
        """Bytes [start, end) of the file to `sink`, in order. When the contact fails
        mid-way, the read goes on through the next one from the first byte not sent.
        A leaf no replica has intact is asked of `fallback`, and verified."""
        await self._read(cid, sink, start, end, fallback, frozenset())

    async def _read(
        self, cid: str, sink: Sink, start: int, end: int | None, fallback: LeafSource | None, skip: frozenset[str]
    ) -> None:
        """`pump` through the contacts not in `skip`."""
        sent = 0

        async def counted(data: bytes) -> None:
            nonlocal sent
            await sink(data)
            sent += len(data)

        async def read(contact: _Contact, client: DhtClient) -> int:
            leaves = self._elsewhere(cid, contact, client, fallback) if fallback is not None else None
            return await client.read(cid, counted, start + sent, end, leaves)

        await self._through_contacts(read, skip)

    def _elsewhere(self, cid: str, contact: _Contact, client: DhtClient, fallback: LeafSource) -> LeafSource:
        """Where a leaf that `contact`'s `client` could not get comes from: the other
        contacts first, since the failure may be the contact's own (and then it is
        one: the contact is dropped), then `fallback` when the ring lacks the leaf."""

        async def leaf(offset: int, size: int) -> bytes:
            parts: list[bytes] = []

            async def keep(data: bytes) -> None:
                parts.append(data)

            try:
                await self._read(cid, keep, offset, offset + size, None, frozenset({contact.address}))
            except ChordError as exc:
                log.info("leaf at %d of %s…: not through the other contacts either (%s); asking the fallback", offset, cid[:16], exc)
                return await fallback(offset, size)
            if contact.client is client:
                self._failed(contact, LookupFailed(f"the leaf at {offset} came through another contact"))
            return b"".join(parts)

        return leaf

    def span(self, nursery: trio.Nursery, cid: str, start: int, end: int, fallback: LeafSource | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) as an async iterator, fetched by a task in `nursery`."""
        return _channel_body(nursery, lambda sink: self.pump(cid, sink, start, end, fallback))

    async def keep_contacts(self, interval: float = CONTACT_REFRESH) -> None:
        """Forever: every `interval` seconds, `refresh`, so that a dead contact is
        found between requests and the set follows the ring as nodes come and go."""
        while True:
            await trio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Ask the contacts, in the order requests use them, until one answers `info`,
        and learn the members it names; False when none answered."""
        tried: set[str] = set()
        while (contact := self._next(tried)) is not None:
            tried.add(contact.address)
            try:
                info = await self._info(contact)
            except TransportError as exc:
                self._failed(contact, exc)
                continue
            contact.failed_at = -math.inf
            self._learn(info)
            return True
        log.warning("no ring contact answered (%d tried)", len(tried))
        return False

    async def _through_contacts(self, use: Callable[[_Contact, DhtClient], Awaitable[T]], skip: frozenset[str] = frozenset()) -> T:
        """`use` with the client of the first usable contact not in `skip`, and again
        with the next one whenever the ring cannot be reached through it. Any other
        ChordError (a block no replica has, a bad range) is an answer, raised as it is."""
        tried = set(skip)
        failures: list[str] = []
        while (contact := self._next(tried)) is not None:
            tried.add(contact.address)
            try:
                return await use(contact, await self._client_of(contact))
            except CONTACT_FAILURES as exc:
                failures.append(f"{contact.address}: {exc}")
                self._failed(contact, exc)
        raise RingUnreachable("no ring contact led into the ring: " + ("; ".join(failures) or "none known"))

    def _next(self, tried: set[str]) -> _Contact | None:
        """The contact to try next: one that works before one that failed (of those,
        the one that failed longest ago), in the configured order, then learned."""
        return min((c for c in self.contacts if c.address not in tried), key=lambda c: c.failed_at, default=None)

    async def _client_of(self, contact: _Contact) -> DhtClient:
        """The contact's client, made on first use from its `info` answer, which
        also names ring members to learn."""
        if contact.client is not None:
            return contact.client
        async with contact.entering:
            if contact.client is None:
                info = await self._info(contact)
                call_timeout = self.timeout / 2  # a silent node costs half a request's deadline, leaving time to go on
                contact.client = await DhtClient.via(self.transport, contact.address, timeout=call_timeout, info=info)
                contact.failed_at = -math.inf
                self._learn(info)
            return contact.client

    async def _info(self, contact: _Contact) -> NodeInfo:
        timeout = min(ENTRY_TIMEOUT, self.timeout)
        return NodeInfo.from_wire(await self.transport.call(contact.address, "info", [], timeout=timeout, node_id=contact.node_id))

    def _learn(self, info: NodeInfo) -> None:
        """Add the members a contact named (successors first) while there is room."""
        known = {contact.address for contact in self.contacts}
        named = [*info.successors, *([info.predecessor] if info.predecessor else []), *info.fingers]
        for node in named:
            if len(self.contacts) >= self.capacity:
                return
            if node.address not in known and node.address != info.me.address and _plausible(node.address):
                self.contacts.append(_Contact(node.address, node.id))
                known.add(node.address)

    def _failed(self, contact: _Contact, exc: ChordError) -> None:
        """Stop using a contact: a configured one is tried again only after the
        others, a learned one is forgotten (a live contact names it again if it lives)."""
        if contact.failed_at == -math.inf:  # once, not once per request that met it
            log.warning("ring contact %s failed (%s); going on through another", contact.address, exc)
        contact.client = None
        contact.failed_at = trio.current_time()
        if not contact.configured and contact in self.contacts:
            self.contacts.remove(contact)


def ring_addresses(value: str | Sequence[str]) -> tuple[str, ...]:
    """Ring node addresses from "HOST:PORT", a comma-separated list of them, or a
    sequence of either; blanks and repeats left out, the order kept."""
    items = [value] if isinstance(value, str) else list(value)
    parts = (part.strip() for item in items for part in item.split(","))
    return tuple(dict.fromkeys(part for part in parts if part))


def _plausible(address: str) -> bool:
    """A learned address fit to log (NodeRef bounds its length; one the transport
    cannot call fails like a dead node and is forgotten)."""
    return address.isprintable()


async def _channel_body(nursery: trio.Nursery, produce: Callable[[Sink], Awaitable[None]]) -> AsyncIterator[bytes]:
    send, receive = trio.open_memory_channel[bytes | BaseException](4)
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            async with send:
                try:
                    await produce(send.send)
                except Exception as exc:  # handed to the reader, who raises it
                    await send.send(exc)

    nursery.start_soon(run)
    try:
        async for item in receive:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        scope.cancel()
