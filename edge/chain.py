"""Where an edge's misses and passed-through requests go, in order.

Owns the chain of upstreams behind the cache: the owner edge on the edges' hash
ring (or the next one while owners are down), the parent, the ring by CID, the
origin; which of them may be tried again after a failure; and reading bodies from
the ring so that a leaf the ring has lost is taken, verified, from the origin
(`fallback`). A path's CID comes from the origin (a HEAD); a `/cid/<CID>` target
goes to the ring alone, since no origin path names it.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import AsyncIterator

import trio

from dht.errors import ChordError

from .client import Content, Interim
from .fallback import OriginLeaves
from .hashring import HashRing
from .messages import RequestBody
from .metrics import EdgeMetrics
from .policy import SAFE_METHODS, first_value
from .upstream import EDGE_HEADER, Answer, DhtSource, HttpUpstream, RingUnreachable, UpstreamError, bodiless

log = logging.getLogger(__name__)

CID_HEADER = "X-Content-CID"
CID_PREFIX = "/cid/"
IMMUTABLE = "public, max-age=31536000, immutable"


class UpstreamChain:
    def __init__(
        self, name: str, origin: str, http: HttpUpstream, dht: DhtSource | None, nursery: trio.Nursery, metrics: EdgeMetrics,
        parent: str | None = None,
    ) -> None:
        self.name, self.origin, self.parent = name, origin, parent
        self.http, self.dht, self.nursery, self.metrics = http, dht, nursery, metrics
        self.peers: dict[str, str] = {}
        self.ring = HashRing([name])

    def set_peers(self, peers: dict[str, str], vnodes: int) -> None:
        self.peers = dict(peers)
        self.ring = HashRing(sorted({self.name, *peers}), vnodes=vnodes)

    async def ask(
        self,
        method: str,
        target: str,
        fields: list[tuple[str, str]],
        stack: AsyncExitStack,
        content: Content = b"",
        from_edge: bool = False,
        on_interim: Interim | None = None,
    ) -> Answer:
        """The first upstream that answers: the owner edge (or the next one on the
        ring while owners are down) unless another edge sent this, the parent, the
        ring by CID (GET only), the origin. A request that may have reached an
        upstream that then failed is not sent again unless it is safe."""
        if not from_edge:
            answer = await self._from_peers(method, target, fields, stack, content, on_interim)
            if answer is not None:
                return answer
        if self.parent:
            try:
                return await self.open(method, self.parent + target, fields, "parent", stack, content, on_interim)
            except UpstreamError as exc:
                if not may_retry(exc, method, content):
                    raise
                log.info("edge %s: parent failed: %s", self.name, exc)
        if method == "GET" and target.startswith(CID_PREFIX):
            return await self.by_cid(target[len(CID_PREFIX) :].split("?", 1)[0], fields)
        if method == "GET" and self.dht is not None:
            answer = await self._from_dht(target, fields)
            if answer is not None:
                return answer
        return await self.open(method, self.origin + target, fields, "origin", stack, content, on_interim)

    async def open(
        self, method: str, url: str, fields: list[tuple[str, str]], tier: str, stack: AsyncExitStack, content: Content = b"",
        on_interim: Interim | None = None,
    ) -> Answer:
        answer, close = await self.http.request(method, url, fields, tier, content, on_interim)
        stack.push_async_callback(close)
        return answer

    async def _from_peers(
        self, method: str, target: str, fields: list[tuple[str, str]], stack: AsyncExitStack, content: Content, on_interim: Interim | None
    ) -> Answer | None:
        """The owner edge, or the next one on the ring while owners are down; None
        when the object is ours to fetch."""
        for name in self.ring.preference(target):
            if name == self.name:
                return None
            try:
                peer_fields = [*fields, (EDGE_HEADER, self.name)]
                return await self.open(method, self.peers[name] + target, peer_fields, "peer", stack, content, on_interim)
            except UpstreamError as exc:
                if not may_retry(exc, method, content):
                    raise
                log.info("edge %s: peer %s is down (%s); trying the next", self.name, name, exc)
        return None

    async def _from_dht(self, target: str, fields: list[tuple[str, str]]) -> Answer | None:
        """Ask the origin for the path's current CID with a HEAD (conditional, when
        we hold a copy) and read the body from the ring; a 304 stands as it is.
        None when the ring cannot serve it."""
        probe = await self.http.head(self.origin + target, fields)
        headers = [(k, v) for k, v in probe.headers if k.lower() != "content-length"]
        if probe.status == 304:
            return bodiless(304, headers, "origin")
        cid = first_value(probe.headers, CID_HEADER)
        if probe.status != 200 or not cid or self.dht is None:
            return None
        try:
            size = await self.dht.size_of(cid)
        except ChordError as exc:
            log.info("edge %s: CID %s not in the ring (%s); going to the origin", self.name, cid[:16], exc)
            return None
        return Answer(200, headers, size, "dht", lambda: self.span(cid, 0, size, target, fields))

    async def by_cid(self, cid: str, fields: list[tuple[str, str]]) -> Answer:
        """A file by CID, from the ring alone; a 404 answer when the ring lacks it."""
        if self.dht is None:
            return _text_answer(404, "this edge has no DHT to read CIDs from")
        try:
            size = await self.dht.size_of(cid)
        except RingUnreachable as exc:
            raise UpstreamError(502, f"the ring: {exc}") from None
        except ChordError as exc:
            return _text_answer(404, f"CID not found: {exc}")
        return Answer(200, cid_fields(cid), size, "dht", lambda: self.span(cid, 0, size, CID_PREFIX + cid, fields))

    def span(self, cid: str, start: int, end: int, origin_target: str, fields: list[tuple[str, str]]) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a file in the ring; a leaf the ring has lost comes
        from the origin at `origin_target`, verified against its key."""
        assert self.dht is not None
        leaves = OriginLeaves(self.http.client, self.origin + origin_target, cid, fields, lambda: self.metrics.event("leaf-from-origin"))
        return self.dht.span(self.nursery, cid, start, end, leaves)


def cid_fields(cid: str) -> list[tuple[str, str]]:
    """What an answer by CID says of itself: its version is its name, forever."""
    return [("ETag", f'"{cid}"'), ("Cache-Control", IMMUTABLE), ("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]


def may_retry(error: UpstreamError, method: str, content: Content) -> bool:
    """May a request that failed upstream go to the next upstream? If it never
    left, or it is safe and no byte of a streamed body was used up."""
    if error.unsent:
        return True
    return method in SAFE_METHODS and not (isinstance(content, RequestBody) and content.taken)


def _text_answer(status: int, text: str) -> Answer:
    body = text.encode() + b"\n"

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return Answer(status, [("Content-Type", "text/plain; charset=utf-8")], len(body), "dht", chunks)
