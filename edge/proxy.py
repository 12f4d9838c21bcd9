"""The edge: answer from the nearest tier that has the object, fetch it once otherwise.

Owns the request path through the tiers (memory, disk, owner edge, parent, DHT by
CID, origin), request collapsing (concurrent misses for one object share a single
upstream fetch whose body every waiter streams as it arrives), `/cid/<CID>`, and
what the edge tells: Cache-Status on every response and `/metrics`.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace

import httpx
import trio

from dht.errors import ChordError
from dht.merkle import BadCid, parse_cid

from .hashring import HashRing
from .httpserver import Request, Response, simple_response
from .metrics import EdgeMetrics
from .policy import end_to_end, field_values, first_value, freshness, parse_cache_control, storable
from .represent import SpoolBody, represent
from .spool import Spool
from .tiers import DiskTier, MemoryTier, Stored
from .upstream import EDGE_HEADER, Answer, DhtSource, HttpUpstream, UpstreamError, forwarded_fields, raw_fields

log = logging.getLogger(__name__)

CID_HEADER = "X-Content-CID"
IMMUTABLE = "public, max-age=31536000, immutable"
# Fields of our own that are never stored with a response.
NOT_STORED = frozenset({"content-length", "cache-status", "age", "date"})


@dataclass
class EdgeConfig:
    name: str
    origin: str
    peers: dict[str, str] = field(default_factory=dict)  # name → base URL, this edge included or not
    parent: str | None = None
    dht: str | None = None
    memory_budget: int = 256 * 1024 * 1024
    disk_dir: str | None = None
    disk_budget: int = 1024**3
    upstream_timeout: float = 10.0
    cid_timeout: float = 5.0
    vnodes: int = 128

    def __post_init__(self) -> None:
        self.origin = self.origin.rstrip("/")
        self.peers = {name: url.rstrip("/") for name, url in self.peers.items()}
        if self.parent:
            self.parent = self.parent.rstrip("/")


@dataclass
class Fetch:
    """One upstream fetch, shared by every request that missed on the same key."""

    key: str
    ready: trio.Event = field(default_factory=trio.Event)
    spool: Spool | None = None
    answer: Answer | None = None
    stored: Stored | None = None  # set when the answer came from a tier (revalidated)
    shareable: bool = True
    error: UpstreamError | None = None


class Edge:
    def __init__(self, config: EdgeConfig, nursery: trio.Nursery, dht: DhtSource | None = None) -> None:
        self.config = config
        self.nursery = nursery
        self.dht = dht
        self.set_peers(config.peers)
        self.memory = MemoryTier(config.memory_budget)
        self.disk = DiskTier(config.disk_dir, config.disk_budget) if config.disk_dir else None
        self.http = HttpUpstream(config.upstream_timeout)
        self.metrics = EdgeMetrics(config.name)
        self.inflight: dict[str, Fetch] = {}
        self.port = 0  # set by whoever binds the listener

    def set_peers(self, peers: dict[str, str]) -> None:
        """Replace the cluster's other edges (name → base URL; this edge may be named)."""
        self.config = replace(self.config, peers={name: url for name, url in peers.items() if name != self.config.name})
        self.ring = HashRing(sorted({self.config.name, *self.config.peers}), vnodes=self.config.vnodes)

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.disk is not None:
            self.disk.close()

    # -- entry ---------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        self.metrics.request(request.method)
        target = request.target  # the decoded path is built only when needed
        if target.startswith("/metrics") and request.path == "/metrics" and request.method == "GET":
            return Response(200, [("Content-Type", self.metrics.content_type)], self.metrics.render())
        if request.method not in ("GET", "HEAD"):
            return self._tag(simple_response(405, "this edge serves GET and HEAD", [("Allow", "GET, HEAD")]), "fwd=method")
        if target.startswith("/cid/"):
            return await self._serve_cid(request, request.path[5:])
        return await self._serve_cached(request)

    def _tag(self, response: Response, status: str, detail: str | None = None) -> Response:
        """Add our Cache-Status entry after any upstream ones (RFC 9211 §2)."""
        value = f"{self.config.name}; {status}" + (f"; detail={detail}" if detail else "")
        response.headers.append(("Cache-Status", value))
        if isinstance(response.body, bytes):
            self.metrics.served(len(response.body))
        else:
            size = response.header("content-length")
            if size and size.isdigit():
                self.metrics.served(int(size))
        return response

    # -- the tiers -----------------------------------------------------------------------

    async def _serve_cached(self, request: Request) -> Response:
        key = request.target
        now = time.time()
        found = self._lookup(key)
        if found is not None:
            tier, stored, source = found
            if stored.fresh(now) and "no-cache" not in parse_cache_control(request.headers.get_all("cache-control")):
                self.metrics.hit(tier)
                return self._tag(represent(request, self._with_age(stored, now), source), "hit", tier)
        stale = found[1] if found else None
        fetch = self.inflight.get(key)
        if fetch is None:
            fetch = self._start_fetch(key, request, stale)
        else:
            self.metrics.collapsed()
            await fetch.ready.wait()
            if not fetch.shareable:  # private or no-store: meant only for the one who asked
                fetch = self._start_fetch(key, request, stale, shared=False)
        await fetch.ready.wait()
        return await self._from_fetch(request, fetch, found)

    def _lookup(self, key: str) -> tuple[str, Stored, object] | None:
        hit = self.memory.get(key)
        if hit is not None:
            return "memory", hit[0], hit[1]
        if self.disk is not None:
            on_disk = self.disk.get(key)
            if on_disk is not None:
                stored, body = on_disk
                if self.memory.fits(stored.size):
                    data = os.pread(body.fd, stored.size, 0)
                    self.memory.put(key, stored, data)
                return "disk", stored, body
        return None

    @staticmethod
    def _with_age(stored: Stored, now: float) -> list[tuple[str, str]]:
        return [*stored.headers, ("Age", str(max(0, int(now - stored.received_at))))]

    async def _from_fetch(self, request: Request, fetch: Fetch, found: tuple[str, Stored, object] | None) -> Response:
        if fetch.error is not None:
            if found is not None and not found[1].must_revalidate:
                tier, stored, source = found
                return self._tag(represent(request, self._with_age(stored, time.time()), source), "fwd=stale", "stale-on-error")
            return self._tag(simple_response(fetch.error.status, str(fetch.error)), "fwd=miss", "error")
        if fetch.stored is not None and found is not None:  # revalidated: the stored copy stands
            return self._tag(represent(request, fetch.stored.headers, found[2]), "fwd=stale; fwd-status=304", "revalidated")  # type: ignore[arg-type]
        answer = fetch.answer
        assert answer is not None and fetch.spool is not None
        tier_status = f"fwd=uri-miss; fwd-status={answer.status}"
        size = answer.size
        if answer.status == 200 and size is None:  # no length given: ranges need the whole body
            await fetch.spool.wait_done()
            size = fetch.spool.size if fetch.spool.complete else None
        if answer.status != 200 or size is None:
            length = [] if answer.size is None else [("Content-Length", str(answer.size))]
            return self._tag(Response(answer.status, [*answer.headers, *length], fetch.spool.reader()), tier_status, answer.tier)
        return self._tag(represent(request, answer.headers, SpoolBody(fetch.spool, size)), tier_status, answer.tier)

    def _start_fetch(self, key: str, request: Request, stale: Stored | None, shared: bool = True) -> Fetch:
        fetch = Fetch(key)
        if shared:
            self.inflight[key] = fetch
        self.nursery.start_soon(self._lead, fetch, request, stale)
        return fetch

    async def _lead(self, fetch: Fetch, request: Request, stale: Stored | None) -> None:
        """Fetch the object for every waiter, then store it."""
        try:
            async with AsyncExitStack() as stack:
                answer = await self._first_answer(request, stale, stack)
                if answer is None:  # revalidated
                    fetch.stored = stale
                    return
                fetch.answer, fetch.spool = answer, Spool()
                fetch.shareable = not {"private", "no-store"} & parse_cache_control(field_values(answer.headers, "cache-control")).keys()
                self.metrics.upstream(answer.tier)
                fetch.ready.set()
                await answer.pump(self._spool_writer(fetch.spool, answer.tier))
                fetch.spool.finish()
            await self._store(fetch.key, request, answer, fetch.spool)
        except UpstreamError as exc:
            log.warning("edge %s: %s %s failed upstream: %s", self.config.name, request.method, fetch.key, exc)
            fetch.error = exc
            if fetch.spool is not None:
                fetch.spool.finish(exc)
        except Exception as exc:
            log.exception("edge %s: fetch of %s failed", self.config.name, fetch.key)
            fetch.error = UpstreamError(502, f"fetch failed: {exc}")
            if fetch.spool is not None:
                fetch.spool.finish(exc)
        finally:
            if self.inflight.get(fetch.key) is fetch:
                del self.inflight[fetch.key]
            fetch.ready.set()

    def _spool_writer(self, spool: Spool, tier: str):  # type: ignore[no-untyped-def]
        metrics = self.metrics

        async def write(chunk: bytes) -> None:
            spool.write(chunk)
            if tier == "origin":
                metrics.origin_bytes(len(chunk))

        return write

    async def _first_answer(self, request: Request, stale: Stored | None, stack: AsyncExitStack) -> Answer | None:
        """Ask the tiers above us in order; None means the stale copy was revalidated."""
        fields = forwarded_fields(request.headers.items(), None)
        if EDGE_HEADER not in request.headers:
            answer = await self._from_peers(request, fields, stack)
            if answer is not None:
                return answer
        if self.config.parent:
            try:
                answer, close = await self.http.get(self.config.parent + request.target, fields, "parent")
                stack.push_async_callback(close)
                return answer
            except UpstreamError as exc:
                log.info("edge %s: parent failed: %s", self.config.name, exc)
        return await self._from_dht_or_origin(request, fields, stale, stack)

    async def _from_peers(self, request: Request, fields: list[tuple[str, str]], stack: AsyncExitStack) -> Answer | None:
        """The owner edge, or the next one on the ring while owners are down; None
        when the object is ours to fetch."""
        for name in self.ring.preference(request.target):
            if name == self.config.name:
                return None
            try:
                answer, close = await self.http.get(self.config.peers[name] + request.target, [*fields, (EDGE_HEADER, self.config.name)], "peer")
            except UpstreamError as exc:
                log.info("edge %s: peer %s is down (%s); trying the next", self.config.name, name, exc)
                continue
            stack.push_async_callback(close)
            return answer
        return None

    async def _from_dht_or_origin(self, request: Request, fields: list[tuple[str, str]], stale: Stored | None, stack: AsyncExitStack) -> Answer | None:
        """The ring when the path's CID is known, else the origin; None when the
        origin says our stale copy is still good (304)."""
        origin_url = self.config.origin + request.target
        conditional = [*fields, *self._conditional(stale)] if stale is not None else fields
        if self.dht is not None:
            probe = await self.http.head(origin_url, conditional)
            if probe.status_code == 304 and stale is not None:
                self._refresh(request.target, stale, raw_fields(probe.headers.raw))
                return None
            answer = await self._from_dht(probe)
            if answer is not None:
                return answer
        answer, close = await self.http.get(origin_url, conditional, "origin")
        stack.push_async_callback(close)
        if answer.status == 304 and stale is not None:
            self._refresh(request.target, stale, answer.headers)
            return None
        return answer

    async def _from_dht(self, probe: httpx.Response) -> Answer | None:
        """The body of a HEAD answer from the ring, by the CID the origin named."""
        cid = probe.headers.get(CID_HEADER)
        dht = self.dht
        if probe.status_code != 200 or not cid or dht is None:
            return None
        try:
            size = await dht.size_of(cid)
        except ChordError as exc:
            log.info("edge %s: CID %s not in the ring (%s); going to the origin", self.config.name, cid[:16], exc)
            return None
        headers = end_to_end(raw_fields(probe.headers.raw))
        return Answer(200, headers, size, "dht", lambda sink: dht.pump(cid, sink))

    @staticmethod
    def _conditional(stored: Stored) -> list[tuple[str, str]]:
        fields = []
        for name, header in (("etag", "If-None-Match"), ("last-modified", "If-Modified-Since")):
            values = field_values(stored.headers, name)
            if values:
                fields.append((header, values[0]))
        return fields

    def _refresh(self, key: str, stale: Stored, headers: list[tuple[str, str]]) -> None:
        stored = stale.refreshed(time.time(), [(k, v) for k, v in headers if k.lower() not in NOT_STORED])
        self.memory.update(key, stored)
        if self.disk is not None:
            self.nursery.start_soon(self.disk.update, key, stored)

    async def _store(self, key: str, request: Request, answer: Answer, spool: Spool) -> None:
        """Keep a storable answer in memory and on disk. What came from the owner
        edge stays there: the cluster caches each object once."""
        if answer.tier == "peer":
            return
        headers = [(k, v) for k, v in answer.headers if k.lower() not in NOT_STORED]
        rules = freshness(headers)
        request_rules = parse_cache_control(request.headers.get_all("cache-control"))
        response_rules = parse_cache_control(field_values(headers, "cache-control"))
        if not storable(answer.status, request_rules, response_rules, "authorization" in request.headers):
            return
        if rules.lifetime <= 0 and not field_values(headers, "etag"):
            return
        cid = first_value(headers, CID_HEADER)
        stored = Stored(headers, spool.size, time.time(), rules.lifetime, rules.must_revalidate, cid)
        if self.memory.fits(spool.size):
            self.memory.put(key, stored, spool.read_all())
        if self.disk is not None:
            with os.fdopen(os.dup(spool.fileno()), "rb") as body:
                await self.disk.put(key, stored, body)

    # -- content by CID ------------------------------------------------------------------

    async def _serve_cid(self, request: Request, text: str) -> Response:
        try:
            parse_cid(text)
        except (BadCid, ValueError) as exc:
            return self._tag(simple_response(400, f"bad CID: {exc}"), "fwd=bypass")
        if self.dht is None:
            return self._tag(simple_response(404, "this edge has no DHT to read CIDs from"), "fwd=bypass")
        try:
            size = await self.dht.size_of(text)
        except ChordError as exc:
            return self._tag(simple_response(404, f"CID not found: {exc}"), "fwd=uri-miss", "dht")
        headers = [
            ("ETag", f'"{text}"'),
            ("Cache-Control", IMMUTABLE),
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
        ]
        self.metrics.upstream("dht")
        return self._tag(represent(request, headers, _DhtBody(self, text, size)), "fwd=uri-miss", "dht")


class _DhtBody:
    """A file in the ring as a BodySource: each span fetches only its leaves."""

    def __init__(self, edge: Edge, cid: str, size: int) -> None:
        self.edge, self.cid, self.size = edge, cid, size

    def span(self, start: int, end: int):  # type: ignore[no-untyped-def]
        assert self.edge.dht is not None
        return self.edge.dht.span(self.edge.nursery, self.cid, start, end)

