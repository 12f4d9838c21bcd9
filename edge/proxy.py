"""The edge: answer from the nearest tier that may answer, fetch once otherwise.

Owns the request path: GET and HEAD through the cache (memory, disk, then one
shared fetch from the upstreams: `fetcher` and `chain`; a GET for one range
that misses goes by `partials`, which keeps 206 pieces), a HEAD for a stale
response written through as a HEAD (RFC 9111 §4.3.5), every other method passed
through to the upstream with the invalidation it causes (and a POST answer kept
for later GETs when RFC 9110 §9.3.3 allows), PURGE, `/cid/<CID>`, CONNECT refused
(501), and what the edge tells: Cache-Status and Via on every response, and
`/metrics`. Every caching rule comes from `policy`; this module only applies them.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import trio

from dht.errors import ChordError
from dht.merkle import BadCid, parse_cid

from .chain import CID_PREFIX, UpstreamChain, cid_fields
from .fetcher import Fetch, Fetcher, relay_interim
from .hashring import HashRing
from .messages import Request, Response, simple_response
from .metrics import EdgeMetrics
from .partials import RangeMisses
from .policy import RequestRules, Reuse, head_freshens, invalidated, origin_form, request_rules, reusable_post, reuse, stale_on_error
from .represent import SpoolBody, represent
from .spool import Spool
from .store import CacheStore, Found
from .tiers import DiskTier, MemoryTier
from .upstream import EDGE_HEADER, NOT_FORWARDED, Answer, DhtSource, HttpUpstream, RingUnreachable, UpstreamError, passed_fields

log = logging.getLogger(__name__)



@dataclass
class EdgeConfig:
    name: str
    origin: str
    peers: dict[str, str] = field(default_factory=dict)  # name → base URL, this edge included or not
    parent: str | None = None
    dht: str | tuple[str, ...] | None = None  # ring nodes to enter the ring through: one address, or several
    memory_budget: int = 256 * 1024 * 1024
    disk_dir: str | None = None
    disk_budget: int = 1024**3
    upstream_timeout: float = 10.0
    cid_timeout: float = 5.0
    vnodes: int = 128
    purge_token: str | None = None  # PURGE needs `Authorization: Bearer <token>`; None passes PURGE through

    def __post_init__(self) -> None:
        self.origin = self.origin.rstrip("/")
        self.peers = {name: url.rstrip("/") for name, url in self.peers.items()}
        if self.parent:
            self.parent = self.parent.rstrip("/")


class Edge:
    def __init__(self, config: EdgeConfig, nursery: trio.Nursery, dht: DhtSource | None = None) -> None:
        self.config = config
        self.nursery = nursery
        self.dht = dht
        self.metrics = EdgeMetrics(config.name)
        self.http = HttpUpstream(config.upstream_timeout)
        self.upstreams = UpstreamChain(config.name, config.origin, self.http, dht, nursery, self.metrics, config.parent)
        self.set_peers(config.peers)
        self.memory = MemoryTier(config.memory_budget)
        self.disk = DiskTier(config.disk_dir, config.disk_budget) if config.disk_dir else None
        self.store = CacheStore(self.memory, self.disk, nursery)
        self.via = f"1.1 {config.name}"
        self.fetcher = Fetcher(config.name, self.via, self.store, self.upstreams, self.metrics, nursery)
        self.range_misses = RangeMisses(self.store, self.fetcher, self.metrics)
        self.origin_authority = urlsplit(config.origin).netloc
        self.port = 0  # set by whoever binds the listener

    def set_peers(self, peers: dict[str, str]) -> None:
        """Replace the cluster's other edges (name → base URL; this edge may be named)."""
        self.config = replace(self.config, peers={name: url for name, url in peers.items() if name != self.config.name})
        self.upstreams.set_peers(self.config.peers, self.config.vnodes)

    @property
    def ring(self) -> HashRing:
        """The edges' hash ring: which edge owns which URL."""
        return self.upstreams.ring

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.disk is not None:
            self.disk.close()

    # -- entry ---------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        self.metrics.request(request.method)
        if request.method == "CONNECT":
            return self._tag(simple_response(501, "this edge is a reverse proxy: no CONNECT tunnels"), "fwd=bypass")
        target = request.target  # the decoded path is built only when needed
        if not target.startswith("/"):
            problem = _to_origin_form(request)
            if problem:
                return self._tag(simple_response(400, problem), "fwd=bypass")
            target = request.target
        method = request.method
        if method == "GET" or method == "HEAD":
            if target.startswith("/metrics") and request.path == "/metrics" and method == "GET":
                return Response(200, [("Content-Type", self.metrics.content_type)], self.metrics.render())
            if target.startswith(CID_PREFIX):
                return await self._serve_cid(request)
            return await self._serve_cached(request)
        if method == "PURGE" and self.config.purge_token:
            return await self._purge(request)
        return await self._pass_through(request)

    def _tag(self, response: Response, status: str, detail: str | None = None) -> Response:
        """Add our Via (RFC 9110 §7.6.3) and our Cache-Status entry after any
        upstream ones (RFC 9211 §2)."""
        value = f"{self.config.name}; {status}" + (f"; detail={detail}" if detail else "")
        response.headers.append(("Via", self.via))
        response.headers.append(("Cache-Status", value))
        if isinstance(response.body, bytes):
            self.metrics.served(len(response.body))
        else:
            size = response.header("content-length")
            if size and size.isdigit():
                self.metrics.served(int(size))
        return response

    # -- GET and HEAD through the cache --------------------------------------------------

    async def _serve_cached(self, request: Request) -> Response:
        key = request.target
        rules = request_rules(request.headers)
        found = self.store.lookup(key, request.headers)
        if found is not None:
            stored = found.stored
            age = stored.age(time.time())
            decision = reuse(stored.rules, age, rules)
            if decision is Reuse.FRESH:
                self.metrics.hit(found.tier)
                return self._tag(self._answer_from(request, found, age), "hit", found.tier)
            if decision is not Reuse.VALIDATE:
                if decision is Reuse.STALE_WHILE_REVALIDATE:
                    self.fetcher.revalidate_in_background(key, request, found)
                    self.metrics.event("stale-while-revalidate")
                self.metrics.hit(found.tier)
                return self._tag(self._answer_from(request, found, age), f"hit; ttl={int(stored.rules.lifetime - age)}", found.tier)
        if found is None:
            outcome = await self.range_misses.serve(request, rules)
            if isinstance(outcome, Fetch):
                return await self._from_fetch(request, outcome, None, rules)
            if outcome is not None:
                return self._tag(*outcome)
        if rules.only_if_cached:
            return self._tag(simple_response(504, "only-if-cached, and no stored response may answer"), "fwd=miss", "only-if-cached")
        if found is not None and request.method == "HEAD":
            return await self._head_through(request, found, rules)
        fetch = await self.fetcher.fetch_for(key, request, found)
        return await self._from_fetch(request, fetch, found, rules)

    async def _head_through(self, request: Request, found: Found, rules: RequestRules) -> Response:
        """A HEAD for a stale stored response goes upstream as a HEAD, and a 200
        whose validators and length match the stored response freshens it, as a
        304 would (RFC 9111 §4.3.5): no body moves either way."""
        fields = passed_fields(request.headers.items(), self.via, NOT_FORWARDED)
        request_time = time.time()
        try:
            async with AsyncExitStack() as stack:
                answer = await self.upstreams.ask("HEAD", request.target, fields, stack, b"", EDGE_HEADER in request.headers)
        except UpstreamError as exc:
            age = found.stored.age(time.time())
            if stale_on_error(found.stored.rules, age, rules, disconnected=True):
                return self._tag(self._answer_from(request, found, age), "fwd=stale", "stale-if-error")
            return self._tag(simple_response(exc.status, _public_reason(exc)), "fwd=stale", "error")
        response_time = time.time()
        self.metrics.upstream(answer.tier)
        stored = found.stored
        if answer.status == 200 and head_freshens(stored.headers, stored.size, answer.headers, answer.size):
            self.metrics.event("revalidated")
            refreshed = self.fetcher.refresh(found, request_time, response_time, answer.headers)
            return self._tag(self._answer_from(request, refreshed, refreshed.stored.age(time.time())), "fwd=stale; fwd-status=200", "head-freshened")
        fields = [*answer.headers, *_length_field(answer.status, answer.size)]
        return self._tag(Response(answer.status, fields, b""), f"fwd=stale; fwd-status={answer.status}", answer.tier)

    @staticmethod
    def _answer_from(request: Request, found: Found, age: float) -> Response:
        """A stored response as the answer to `request`, with its Age (RFC 9111
        §4.2.3). Preconditions and ranges apply to a stored 200; any other status
        is sent as stored."""
        stored = found.stored
        headers = [*stored.headers, ("Age", str(int(age)))]
        if stored.status == 200:
            return represent(request, headers, found.body)
        return Response(stored.status, [*headers, *_length_field(stored.status, stored.size)], found.body.span(0, stored.size))

    async def _from_fetch(self, request: Request, fetch: Fetch, found: Found | None, rules: RequestRules) -> Response:
        if fetch.revalidated is not None:
            self.metrics.event("revalidated")
            revalidated = fetch.revalidated
            return self._tag(self._answer_from(request, revalidated, revalidated.stored.age(time.time())), "fwd=stale; fwd-status=304", "revalidated")
        answer, spool = fetch.answer, fetch.spool
        failed = fetch.error is not None or (answer is not None and answer.status >= 500)
        if failed and found is not None:
            age = found.stored.age(time.time())
            if stale_on_error(found.stored.rules, age, rules, disconnected=fetch.error is not None):
                self.metrics.event("stale-if-error")
                return self._tag(self._answer_from(request, found, age), "fwd=stale", "stale-if-error")
        if fetch.error is not None:
            return self._tag(simple_response(fetch.error.status, _public_reason(fetch.error)), "fwd=miss", "error")
        assert answer is not None and spool is not None
        tier_status = f"fwd={'stale' if found else 'uri-miss'}; fwd-status={answer.status}"
        headers = _with_age(answer.headers, fetch.initial_age) if fetch.shareable else answer.headers
        if answer.status == 200:
            size = answer.size
            if size is None:  # no length given: ranges need the whole body
                await spool.wait_done()
                size = spool.size if spool.complete else None
            if size is not None:
                return self._tag(represent(request, headers, SpoolBody(spool, size)), tier_status, answer.tier)
        fields = [*headers, *_length_field(answer.status, answer.size)]
        return self._tag(Response(answer.status, fields, spool.reader()), tier_status, answer.tier)

    # -- every other method --------------------------------------------------------------

    async def _pass_through(self, request: Request) -> Response:
        """Forward a request the cache does not answer, body and all, and drop the
        stored responses a successful unsafe method invalidates (RFC 9111 §4.4)."""
        self.metrics.event("passed")
        fields = passed_fields(request.headers.items(), self.via)
        stack = AsyncExitStack()
        request_time = time.time()
        try:
            answer = await self.upstreams.ask(
                request.method, request.target, fields, stack, request.body, EDGE_HEADER in request.headers, relay_interim(request)
            )
        except UpstreamError as exc:
            await stack.aclose()
            log.warning("edge %s: %s %s failed upstream: %s", self.config.name, request.method, request.target, exc)
            return self._tag(simple_response(exc.status, _public_reason(exc)), "fwd=method", "error")
        authorities = (self.origin_authority, request.headers.get("host") or "")
        for target in invalidated(request.method, answer.status, request.target, answer.headers, authorities):
            self.metrics.event("invalidated", self.store.remove(target))
        fields = [*answer.headers, *_length_field(answer.status, answer.size)]
        body = _UpstreamBody(answer, stack, self._post_to_store(request, answer, request_time, authorities))
        return self._tag(Response(answer.status, fields, body), f"fwd=method; fwd-status={answer.status}", answer.tier)

    def _post_to_store(self, request: Request, answer: Answer, request_time: float, authorities: tuple[str, str]) -> "_Keeper | None":
        """How to keep a POST's answer for later GETs of its target, when it may be
        kept (`policy.reusable_post`); only the owner keeps it, as for a GET."""
        if request.method != "POST" or answer.tier == "peer":
            return None
        if not reusable_post(answer.status, request.target, answer.headers, authorities):
            return None
        stored = self.fetcher.storable(request, answer, request_time, time.time())
        if stored is None:
            return None

        async def keep(spool: Spool) -> None:
            if answer.size is None or answer.size == spool.size:
                await self.store.put(request.target, request.headers, replace(stored, size=spool.size), spool)
                self.metrics.event("post-stored")

        return keep

    # -- purge ---------------------------------------------------------------------------

    async def _purge(self, request: Request) -> Response:
        """`PURGE <path>` with the start-up token: remove the URL, every variant,
        from every tier here and at its owner edge."""
        expected = f"Bearer {self.config.purge_token}".encode()
        if not hmac.compare_digest((request.headers.get("authorization") or "").encode("latin-1"), expected):
            challenge = [("WWW-Authenticate", 'Bearer realm="purge"')]
            return self._tag(simple_response(401, "PURGE needs Authorization: Bearer <the edge's purge token>", challenge), "fwd=bypass")
        removed = {self.config.name: self.store.remove(request.target)}
        owner = self.ring.owner(request.target)
        if owner != self.config.name and EDGE_HEADER not in request.headers:
            try:
                removed[owner] = await self._purge_at(owner, request)
            except UpstreamError as exc:
                return self._tag(simple_response(502, f"purged here, but the owner edge {owner} failed: {exc}"), "fwd=bypass", "error")
        self.metrics.event("purged", sum(removed.values()))
        body = json.dumps({"purged": request.target, "removed": removed}).encode() + b"\n"
        return self._tag(Response(200, [("Content-Type", "application/json")], body), "fwd=bypass")

    async def _purge_at(self, owner: str, request: Request) -> int:
        fields = [("Authorization", request.headers.get("authorization") or ""), (EDGE_HEADER, self.config.name)]
        async with AsyncExitStack() as stack:
            answer = await self.upstreams.open("PURGE", self.config.peers[owner] + request.target, fields, "peer", stack, b"")
            text = b"".join([chunk async for chunk in answer.chunks()])
        if answer.status != 200:
            raise UpstreamError(502, f"answered {answer.status}: {text[:200]!r}")
        return int(json.loads(text)["removed"][owner])

    # -- content by CID ------------------------------------------------------------------

    async def _serve_cid(self, request: Request) -> Response:
        """`/cid/<CID>`: immutable, so cached like any answer; a range of a file
        no tier holds is read from the ring alone, fetching only its leaves."""
        text = request.path[len(CID_PREFIX) :]
        try:
            parse_cid(text)
        except (BadCid, ValueError) as exc:
            return self._tag(simple_response(400, f"bad CID: {exc}"), "fwd=bypass")
        if "range" in request.headers and self.dht is not None and self.store.lookup(request.target, request.headers) is None:
            return await self._serve_cid_range(request, text)
        return await self._serve_cached(request)

    async def _serve_cid_range(self, request: Request, cid: str) -> Response:
        assert self.dht is not None
        try:
            size = await self.dht.size_of(cid)
        except RingUnreachable:
            return self._tag(simple_response(502, "the ring could not be reached"), "fwd=uri-miss", "error")
        except ChordError as exc:
            return self._tag(simple_response(404, f"CID not found: {exc}"), "fwd=uri-miss", "dht")
        self.metrics.upstream("dht")
        return self._tag(represent(request, cid_fields(cid), _DhtBody(self.upstreams, cid, size)), "fwd=uri-miss", "dht")


class _DhtBody:
    """A file in the ring as a BodySource: each span fetches only its leaves."""

    def __init__(self, upstreams: UpstreamChain, cid: str, size: int) -> None:
        self.upstreams, self.cid, self.size = upstreams, cid, size

    def span(self, start: int, end: int) -> AsyncIterator[bytes]:
        return self.upstreams.span(self.cid, start, end, CID_PREFIX + self.cid, [])


_Keeper = Callable[[Spool], Awaitable[None]]


class _UpstreamBody:
    """A passed-through response's body; closing it releases the upstream
    connection even when no byte of it was read (a 204, or a client gone). With a
    `keep` function, the body is also spooled as it passes, and kept once whole."""

    def __init__(self, answer: Answer, stack: AsyncExitStack, keep: _Keeper | None = None) -> None:
        self.answer, self.stack, self.keep = answer, stack, keep
        self.spool: Spool | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.answer.chunks() if self.keep is None else self._spooled()

    async def _spooled(self) -> AsyncIterator[bytes]:
        spool = Spool()
        async for chunk in self.answer.chunks():
            spool.write(chunk)
            yield chunk
        spool.finish()
        self.spool = spool

    async def aclose(self) -> None:
        await self.stack.aclose()
        if self.keep is not None and self.spool is not None:
            await self.keep(self.spool)


def _with_age(headers: list[tuple[str, str]], age: float) -> list[tuple[str, str]]:
    """A forwarded answer that will be stored, from an upstream that sent no Age,
    says how old it already is when that is a second or more (a slow origin): the
    time the answer took, or its age by its Date (RFC 9111 §4.2.3, §5.1), so that
    it agrees with the Age of the hits that follow. An upstream's own Age is
    passed on unchanged."""
    if age < 1 or any(k.lower() == "age" for k, _ in headers):
        return headers
    return [*headers, ("Age", str(int(age)))]


def _length_field(status: int, size: int | None) -> list[tuple[str, str]]:
    """Content-Length for a body of known size; none for 204 and 304 (RFC 9110 §8.6)."""
    return [] if size is None or status in (204, 304) else [("Content-Length", str(size))]


def _public_reason(error: UpstreamError) -> str:
    """What a client is told of an upstream failure: no internal addresses (the log has them)."""
    return "the upstream timed out" if error.status == 504 else "the upstream did not answer properly"


def _to_origin_form(request: Request) -> str | None:
    """Turn an absolute-form target (RFC 9112 §3.2.2) into a path; the problem
    with it otherwise."""
    parts = urlsplit(request.target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"request target {request.target[:200]!r} is neither a path nor an http URL"
    request.target = origin_form(parts)
    request.__dict__.pop("path", None)  # drop the decoded path cached for the old target
    return None
