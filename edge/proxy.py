"""The edge: answer from the nearest tier that may answer, fetch once otherwise.

Owns the request path: GET and HEAD through the cache (memory, disk, owner edge,
parent, DHT by CID, origin), every other method passed through to the upstream with
the invalidation it causes, PURGE, request collapsing (concurrent misses for one
object share a single upstream fetch whose body every waiter streams as it
arrives), `/cid/<CID>`, and what the edge tells: Cache-Status and Via on every
response, and `/metrics`. Every caching rule comes from `policy`; this module only
applies them.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import trio

from dht.errors import ChordError
from dht.merkle import BadCid, parse_cid

from .hashring import HashRing
from .httpserver import Request, Response, simple_response
from .metrics import EdgeMetrics
from .policy import (
    SAFE_METHODS,
    RequestRules,
    Reuse,
    end_to_end,
    first_value,
    initial_age,
    invalidated,
    origin_form,
    request_rules,
    response_rules,
    reuse,
    secondary_key,
    stale_on_error,
    storable,
    stored_fields,
    validators_of,
    vary_names,
)
from .represent import SpoolBody, represent
from .spool import Spool
from .store import CacheStore, Found
from .tiers import DiskTier, MemoryTier, Stored
from .client import Interim
from .upstream import EDGE_HEADER, NOT_FORWARDED, Answer, DhtSource, HttpUpstream, UpstreamError, bodiless, passed_fields

log = logging.getLogger(__name__)

CID_HEADER = "X-Content-CID"
IMMUTABLE = "public, max-age=31536000, immutable"


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
    purge_token: str | None = None  # PURGE needs `Authorization: Bearer <token>`; None passes PURGE through

    def __post_init__(self) -> None:
        self.origin = self.origin.rstrip("/")
        self.peers = {name: url.rstrip("/") for name, url in self.peers.items()}
        if self.parent:
            self.parent = self.parent.rstrip("/")


@dataclass
class Fetch:
    """One upstream fetch, shared by the requests that missed on the same URL and
    that its answer may serve."""

    key: str
    request: Request  # the leader's
    ready: trio.Event = field(default_factory=trio.Event)
    spool: Spool | None = None
    answer: Answer | None = None
    revalidated: Found | None = None  # set when a 304 renewed the stored response
    shareable: bool = False
    vary: tuple[str, ...] = ()
    error: UpstreamError | None = None

    def serves(self, request: Request) -> bool:
        """May this fetch's answer serve `request` too? Only if a shared cache could
        have stored it, and the request selects the same variant (RFC 9111 §4.1)."""
        if not self.shareable:
            return False
        return not self.vary or secondary_key(self.vary, self.request.headers) == secondary_key(self.vary, request.headers)


class Edge:
    def __init__(self, config: EdgeConfig, nursery: trio.Nursery, dht: DhtSource | None = None) -> None:
        self.config = config
        self.nursery = nursery
        self.dht = dht
        self.set_peers(config.peers)
        self.memory = MemoryTier(config.memory_budget)
        self.disk = DiskTier(config.disk_dir, config.disk_budget) if config.disk_dir else None
        self.store = CacheStore(self.memory, self.disk, nursery)
        self.http = HttpUpstream(config.upstream_timeout)
        self.metrics = EdgeMetrics(config.name)
        self.inflight: dict[str, Fetch] = {}
        self.via = f"1.1 {config.name}"
        self.origin_authority = urlsplit(config.origin).netloc
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
        if not target.startswith("/"):
            problem = _to_origin_form(request)
            if problem:
                return self._tag(simple_response(400, problem), "fwd=bypass")
            target = request.target
        method = request.method
        if method == "GET" or method == "HEAD":
            if target.startswith("/metrics") and request.path == "/metrics" and method == "GET":
                return Response(200, [("Content-Type", self.metrics.content_type)], self.metrics.render())
            if target.startswith("/cid/"):
                return await self._serve_cid(request, request.path[5:])
            return await self._serve_cached(request)
        if method == "PURGE" and self.config.purge_token:
            return await self._purge(request)
        if method == "CONNECT":
            return self._tag(simple_response(501, "this edge is a reverse proxy: no CONNECT tunnels"), "fwd=bypass")
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
                    self._revalidate_in_background(key, request, found)
                    self.metrics.event("stale-while-revalidate")
                self.metrics.hit(found.tier)
                return self._tag(self._answer_from(request, found, age), f"hit; ttl={int(stored.rules.lifetime - age)}", found.tier)
        if rules.only_if_cached:
            return self._tag(simple_response(504, "only-if-cached, and no stored response may answer"), "fwd=miss", "only-if-cached")
        fetch = await self._fetch_for(key, request, found)
        return await self._from_fetch(request, fetch, found, rules)

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

    async def _fetch_for(self, key: str, request: Request, found: Found | None) -> Fetch:
        """Join the fetch in flight for this URL when its answer may serve this
        request, else lead one. A request with credentials never waits on
        another's fetch."""
        fetch = self.inflight.get(key)
        if fetch is None or "authorization" in request.headers:
            fetch = self._start_fetch(key, request, found, shared=fetch is None, relay=True)
        else:
            self.metrics.collapsed()
            await fetch.ready.wait()
            if not fetch.serves(request):
                fetch = self._start_fetch(key, request, found, shared=False, relay=True)
        await fetch.ready.wait()
        return fetch

    def _revalidate_in_background(self, key: str, request: Request, found: Found) -> None:
        if key not in self.inflight:
            self._start_fetch(key, request, found, shared=True)

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
        if answer.status == 200:
            size = answer.size
            if size is None:  # no length given: ranges need the whole body
                await spool.wait_done()
                size = spool.size if spool.complete else None
            if size is not None:
                return self._tag(represent(request, answer.headers, SpoolBody(spool, size)), tier_status, answer.tier)
        fields = [*answer.headers, *_length_field(answer.status, answer.size)]
        return self._tag(Response(answer.status, fields, spool.reader()), tier_status, answer.tier)

    def _start_fetch(self, key: str, request: Request, found: Found | None, shared: bool, relay: bool = False) -> Fetch:
        """Fetch in the edge's nursery; with `relay`, the leader's client is waiting
        and gets the interim responses."""
        fetch = Fetch(key, request)
        if shared:
            self.inflight[key] = fetch
        self.nursery.start_soon(self._lead, fetch, found, _relay(request) if relay else None)
        return fetch

    async def _lead(self, fetch: Fetch, found: Found | None, on_interim: Interim | None) -> None:
        """Fetch the object for every waiter, then store it if a shared cache may."""
        request = fetch.request
        try:
            async with AsyncExitStack() as stack:
                fields = passed_fields(request.headers.items(), self.via, NOT_FORWARDED)
                if found is not None:
                    fields += validators_of(found.stored.headers)
                request_time = time.time()
                answer = await self._ask_upstream("GET", request.target, fields, stack, b"", EDGE_HEADER in request.headers, on_interim)
                response_time = time.time()
                if answer.status == 304 and found is not None:  # our validators matched
                    fetch.revalidated = self._refresh(found, request_time, response_time, answer.headers)
                    fetch.shareable, fetch.vary = True, vary_names(found.stored.headers)
                    return
                stored = self._storable(request, answer, request_time, response_time)
                fetch.answer, fetch.spool = answer, Spool()
                fetch.shareable, fetch.vary = stored is not None, vary_names(answer.headers)
                self.metrics.upstream(answer.tier)
                fetch.ready.set()
                await answer.pump(self._spool_writer(fetch.spool, answer.tier))
                fetch.spool.finish()
            if stored is not None and self._keeps(answer, found, fetch.spool):
                await self.store.put(fetch.key, request.headers, replace(stored, size=fetch.spool.size), fetch.spool)
        except UpstreamError as exc:
            log.warning("edge %s: %s %s failed upstream: %s", self.config.name, request.method, fetch.key, exc)
            self._fail(fetch, exc)
        except Exception as exc:
            log.exception("edge %s: fetch of %s failed", self.config.name, fetch.key)
            self._fail(fetch, UpstreamError(502, f"fetch failed: {exc}"))
        finally:
            if self.inflight.get(fetch.key) is fetch:
                del self.inflight[fetch.key]
            fetch.ready.set()

    @staticmethod
    def _fail(fetch: Fetch, error: UpstreamError) -> None:
        fetch.error = error
        if fetch.spool is not None:
            fetch.spool.finish(error)

    def _storable(self, request: Request, answer: Answer, request_time: float, response_time: float) -> Stored | None:
        """The answer as a shared cache would store it, or None if it may not."""
        rules = response_rules(answer.status, answer.headers)
        allowed = storable("GET", answer.status, request_rules(request.headers), answer.headers, "authorization" in request.headers, rules.lifetime)
        if not allowed:
            return None
        headers = stored_fields(answer.headers, response_time)
        age = initial_age(answer.headers, request_time, response_time)
        return Stored(answer.status, headers, answer.size or 0, response_time, age, rules, first_value(headers, CID_HEADER))

    @staticmethod
    def _keeps(answer: Answer, found: Found | None, spool: Spool) -> bool:
        """Store a complete answer, unless the owner edge keeps it (the cluster
        caches each object once) or it is a server error that would push out a
        stored response."""
        if answer.tier == "peer" or (answer.size is not None and answer.size != spool.size):
            return False
        return not (answer.status >= 500 and found is not None)

    def _spool_writer(self, spool: Spool, tier: str):  # type: ignore[no-untyped-def]
        metrics = self.metrics

        async def write(chunk: bytes) -> None:
            spool.write(chunk)
            if tier == "origin":
                metrics.origin_bytes(len(chunk))

        return write

    def _refresh(self, found: Found, request_time: float, response_time: float, headers: list[tuple[str, str]]) -> Found:
        stored = found.stored.refreshed(request_time, response_time, headers)
        self.store.update(found.key, stored)
        return replace(found, stored=stored)

    # -- upstream ------------------------------------------------------------------------

    async def _ask_upstream(
        self,
        method: str,
        target: str,
        fields: list[tuple[str, str]],
        stack: AsyncExitStack,
        content: bytes = b"",
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
        if self.config.parent:
            try:
                return await self._open(method, self.config.parent + target, fields, "parent", stack, content, on_interim)
            except UpstreamError as exc:
                if not (exc.unsent or method in SAFE_METHODS):
                    raise
                log.info("edge %s: parent failed: %s", self.config.name, exc)
        if method == "GET" and self.dht is not None:
            answer = await self._from_dht(target, fields)
            if answer is not None:
                return answer
        return await self._open(method, self.config.origin + target, fields, "origin", stack, content, on_interim)

    async def _open(
        self, method: str, url: str, fields: list[tuple[str, str]], tier: str, stack: AsyncExitStack, content: bytes, on_interim: Interim | None = None
    ) -> Answer:
        answer, close = await self.http.request(method, url, fields, tier, content, on_interim)
        stack.push_async_callback(close)
        return answer

    async def _from_peers(
        self, method: str, target: str, fields: list[tuple[str, str]], stack: AsyncExitStack, content: bytes, on_interim: Interim | None
    ) -> Answer | None:
        """The owner edge, or the next one on the ring while owners are down; None
        when the object is ours to fetch."""
        for name in self.ring.preference(target):
            if name == self.config.name:
                return None
            try:
                peer_fields = [*fields, (EDGE_HEADER, self.config.name)]
                return await self._open(method, self.config.peers[name] + target, peer_fields, "peer", stack, content, on_interim)
            except UpstreamError as exc:
                if not (exc.unsent or method in SAFE_METHODS):
                    raise
                log.info("edge %s: peer %s is down (%s); trying the next", self.config.name, name, exc)
        return None

    async def _from_dht(self, target: str, fields: list[tuple[str, str]]) -> Answer | None:
        """Ask the origin for the path's current CID with a HEAD (conditional, when
        we hold a copy) and read the body from the ring; a 304 stands as it is.
        None when the ring cannot serve it."""
        probe = await self.http.head(self.config.origin + target, fields)
        headers = [(k, v) for k, v in probe.headers if k.lower() != "content-length"]
        if probe.status == 304:
            return bodiless(304, headers, "origin")
        cid = first_value(probe.headers, CID_HEADER)
        dht = self.dht
        if probe.status != 200 or not cid or dht is None:
            return None
        try:
            size = await dht.size_of(cid)
        except ChordError as exc:
            log.info("edge %s: CID %s not in the ring (%s); going to the origin", self.config.name, cid[:16], exc)
            return None
        return Answer(200, headers, size, "dht", lambda: dht.span(self.nursery, cid, 0, size))

    # -- every other method --------------------------------------------------------------

    async def _pass_through(self, request: Request) -> Response:
        """Forward a request the cache does not answer, body and all, and drop the
        stored responses a successful unsafe method invalidates (RFC 9111 §4.4)."""
        self.metrics.event("passed")
        fields = passed_fields(request.headers.items(), self.via)
        stack = AsyncExitStack()
        try:
            answer = await self._ask_upstream(
                request.method, request.target, fields, stack, request.body, EDGE_HEADER in request.headers, _relay(request)
            )
        except UpstreamError as exc:
            await stack.aclose()
            log.warning("edge %s: %s %s failed upstream: %s", self.config.name, request.method, request.target, exc)
            return self._tag(simple_response(exc.status, _public_reason(exc)), "fwd=method", "error")
        authorities = (self.origin_authority, request.headers.get("host") or "")
        for target in invalidated(request.method, answer.status, request.target, answer.headers, authorities):
            self.metrics.event("invalidated", self.store.remove(target))
        fields = [*answer.headers, *_length_field(answer.status, answer.size)]
        body = _UpstreamBody(answer, stack)
        return self._tag(Response(answer.status, fields, body), f"fwd=method; fwd-status={answer.status}", answer.tier)

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
            answer = await self._open("PURGE", self.config.peers[owner] + request.target, fields, "peer", stack, b"")
            text = b"".join([chunk async for chunk in answer.chunks()])
        if answer.status != 200:
            raise UpstreamError(502, f"answered {answer.status}: {text[:200]!r}")
        return int(json.loads(text)["removed"][owner])

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



class _UpstreamBody:
    """A passed-through response's body; closing it releases the upstream
    connection even when no byte of it was read (a 204, or a client gone)."""

    def __init__(self, answer: Answer, stack: AsyncExitStack) -> None:
        self.answer, self.stack = answer, stack

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self.answer.chunks()

    async def aclose(self) -> None:
        await self.stack.aclose()


def _length_field(status: int, size: int | None) -> list[tuple[str, str]]:
    """Content-Length for a body of known size; none for 204 and 304 (RFC 9110 §8.6)."""
    return [] if size is None or status in (204, 304) else [("Content-Length", str(size))]


def _public_reason(error: UpstreamError) -> str:
    """What a client is told of an upstream failure: no internal addresses (the log has them)."""
    return "the upstream timed out" if error.status == 504 else "the upstream did not answer properly"


def _relay(request: Request) -> Interim | None:
    """Pass upstream interim responses on to the client (RFC 9110 §15.2), but not
    100 (this server answers Expect itself) nor 101 (no upgrades here)."""
    send = request.interim
    if send is None:
        return None

    async def relay(status: int, fields: list[tuple[str, str]]) -> None:
        if status in (100, 101):
            return
        try:
            await send(status, end_to_end(fields))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client left; the fetch goes on for the cache

    return relay


def _to_origin_form(request: Request) -> str | None:
    """Turn an absolute-form target (RFC 9112 §3.2.2) into a path; the problem
    with it otherwise."""
    parts = urlsplit(request.target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"request target {request.target[:200]!r} is neither a path nor an http URL"
    request.target = origin_form(parts)
    request.__dict__.pop("path", None)  # drop the decoded path cached for the old target
    return None
