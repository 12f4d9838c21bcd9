"""Where an edge's misses go: other edges, a parent, the origin (HTTP), the DHT (CID).

Owns talking upstream. Each source answers with an `Answer`: status, end-to-end
header fields, the body's size when known, and a `pump` that streams the body into
a callback. HTTP goes through one pooled httpx client; DHT reads verify every block
(the DhtClient does) and fetch only the leaves a range needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import httpx
import trio

from dht.client import DhtClient
from dht.errors import ChordError
from dht.tcp import TcpTransport

from .policy import end_to_end

log = logging.getLogger(__name__)

EDGE_HEADER = "X-Chordcdn-Edge"  # marks a request one edge sends another
# Request fields an edge does not pass when it fetches a whole object for its cache.
NOT_FORWARDED = frozenset({"host", "range", "if-range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "content-length", "expect"})

Sink = Callable[[bytes], Awaitable[None]]


class UpstreamError(Exception):
    """No upstream gave an answer. `status` is 502 (unreachable, broken) or 504 (timed out)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    size: int | None
    tier: str
    pump: Callable[[Sink], Awaitable[None]]


def raw_fields(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """httpx's raw header pairs as text."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def forwarded_fields(headers: list[tuple[str, str]], edge_name: str | None) -> list[tuple[str, str]]:
    fields = [(k, v) for k, v in end_to_end(headers) if k.lower() not in NOT_FORWARDED]
    if edge_name is not None:
        fields.append((EDGE_HEADER, edge_name))
    return fields


class HttpUpstream:
    """One pooled client for every HTTP upstream of an edge."""

    def __init__(self, timeout: float) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, url: str, fields: list[tuple[str, str]], tier: str) -> tuple[Answer, Callable[[], Awaitable[None]]]:
        """Start a GET; return the answer and a close function the caller must await."""
        request = self.client.build_request("GET", url, headers=fields)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError(504, f"{tier} {url}: timed out ({exc.__class__.__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"{tier} {url}: {exc.__class__.__name__}: {exc}") from None

        async def pump(sink: Sink) -> None:
            try:
                async for chunk in response.aiter_raw():
                    await sink(chunk)
            except httpx.TimeoutException as exc:
                raise UpstreamError(504, f"{tier} {url}: body timed out") from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(502, f"{tier} {url}: body broke off: {exc}") from exc

        length = response.headers.get("content-length")
        size = int(length) if length and length.isdigit() else None
        fields = [(k, v) for k, v in end_to_end(raw_fields(response.headers.raw)) if k.lower() != "content-length"]
        answer = Answer(response.status_code, fields, size, tier, pump)
        return answer, response.aclose

    async def head(self, url: str, fields: list[tuple[str, str]]) -> httpx.Response:
        try:
            return await self.client.head(url, headers=fields)
        except httpx.TimeoutException as exc:
            raise UpstreamError(504, f"origin {url}: timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"origin {url}: {exc.__class__.__name__}: {exc}") from exc


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
