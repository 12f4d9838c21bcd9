"""Where an edge's misses go: other edges, a parent, the origin (HTTP), the DHT (CID).

Owns talking upstream and which request fields go there. Each source answers
with an `Answer`: status, end-to-end header fields, the body's size when known,
and its body as chunks. HTTP goes through one pooled client (`client`); DHT reads verify every block
(the DhtClient does) and fetch only the leaves a range needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import trio

from dht.client import DhtClient
from dht.errors import ChordError
from dht.tcp import TcpTransport

from .client import ClientError, HttpClient, Interim
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
        self, method: str, url: str, fields: list[tuple[str, str]], tier: str, content: bytes = b"", on_interim: Interim | None = None
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


class DhtSource:
    """Bodies by CID from the ring, through one node of it; the client is made on
    first use and again after a failure, so an edge may start before its node."""

    def __init__(self, transport: TcpTransport, address: str, timeout: float) -> None:
        self.transport = transport
        self.address = address
        self.timeout = timeout
        self._client: DhtClient | None = None

    async def client(self) -> DhtClient:
        if self._client is None:
            self._client = await DhtClient.via(self.transport, self.address, timeout=self.timeout)
        return self._client

    async def size_of(self, cid: str) -> int:
        """The file's size from its root block; ChordError if the ring lacks it."""
        try:
            with trio.fail_after(self.timeout):
                return (await (await self.client()).stat(cid)).size
        except trio.TooSlowError:
            raise ChordError(f"CID {cid[:16]}…: no answer from the ring within {self.timeout:g}s") from None
        except ChordError:
            self._client = None
            raise

    async def pump(self, cid: str, sink: Sink, start: int = 0, end: int | None = None) -> None:
        await (await self.client()).read(cid, sink, start, end)

    def span(self, nursery: trio.Nursery, cid: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) as an async iterator, fetched by a task in `nursery`."""
        return _channel_body(nursery, lambda sink: self.pump(cid, sink, start, end))


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
