"""Fetching a URL once for every request that misses on it, and storing the answer.

Owns request collapsing: one upstream fetch per URL runs in the edge's own nursery
(not in the first client's task, so a client hanging up does not cancel it for
the others); requests that miss on the URL while it runs wait on it and stream its
body from the spool, when its answer may serve them (a shared cache could store
it, and they select the same variant). Also owns what happens to the answer: a 304
renews the stored response, a storable answer is stored once complete, and a body
that breaks off leaves its readers with one that does not end cleanly.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace

import trio

from .chain import CID_HEADER, UpstreamChain
from .client import Interim
from .messages import Request
from .metrics import EdgeMetrics
from .policy import end_to_end, first_value, initial_age, request_rules, response_rules, storable, stored_fields, validators_of
from .spool import Spool
from .store import CacheStore, Found
from .tiers import Stored
from .upstream import EDGE_HEADER, NOT_FORWARDED, Answer, UpstreamError, passed_fields
from .vary import secondary_key, vary_names

log = logging.getLogger(__name__)


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
    conditional: bool = False  # the leader's If-None-Match goes upstream (a miss; not shared)
    initial_age: float = 0.0  # the answer's corrected initial age (RFC 9111 §4.2.3)
    extra: tuple[tuple[str, str], ...] = ()  # fields of this fetch's own (a Range for pieces)
    request_time: float = 0.0
    response_time: float = 0.0

    def serves(self, request: Request) -> bool:
        """May this fetch's answer serve `request` too? Only if a shared cache could
        have stored it, and the request selects the same variant (RFC 9111 §4.1)."""
        if not self.shareable:
            return False
        return not self.vary or secondary_key(self.vary, self.request.headers) == secondary_key(self.vary, request.headers)


class Fetcher:
    """The fetches in flight, by URL, and the leading of each."""

    def __init__(self, name: str, via: str, store: CacheStore, upstreams: UpstreamChain, metrics: EdgeMetrics, nursery: trio.Nursery) -> None:
        self.name, self.via = name, via
        self.store, self.upstreams, self.metrics, self.nursery = store, upstreams, metrics, nursery
        self.inflight: dict[str, Fetch] = {}

    async def fetch_for(self, key: str, request: Request, found: Found | None) -> Fetch:
        """Join the fetch in flight for this URL when its answer may serve this
        request, else lead one. A request with credentials never waits on
        another's fetch."""
        fetch = self.inflight.get(key)
        if fetch is None and found is None and "if-none-match" in request.headers:
            fetch = self.start(key, request, None, shared=False, relay=True, conditional=True)
        elif fetch is None or "authorization" in request.headers:
            fetch = self.start(key, request, found, shared=fetch is None, relay=True)
        else:
            self.metrics.collapsed()
            await fetch.ready.wait()
            if not fetch.serves(request):
                fetch = self.start(key, request, found, shared=False, relay=True)
        await fetch.ready.wait()
        return fetch

    def revalidate_in_background(self, key: str, request: Request, found: Found) -> None:
        if key not in self.inflight:
            self.start(key, request, found, shared=True)

    def start(
        self, key: str, request: Request, found: Found | None, shared: bool, relay: bool = False, conditional: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Fetch:
        """Fetch in the edge's nursery; with `relay`, the leader's client is waiting
        and gets the interim responses. A `conditional` fetch (a miss whose client
        sent If-None-Match) passes the client's entity tags on, so that an origin
        holding the same version answers 304 and sends no body (RFC 9111 §4.3.2);
        its answer serves that client alone. `extra` fields go upstream too."""
        fetch = Fetch(key, request, conditional=conditional, extra=extra)
        if shared:
            self.inflight[key] = fetch
        self.nursery.start_soon(self._lead, fetch, found, relay_interim(request) if relay else None)
        return fetch

    async def _lead(self, fetch: Fetch, found: Found | None, on_interim: Interim | None) -> None:
        """Fetch the object for every waiter, then store it if a shared cache may."""
        request = fetch.request
        try:
            async with AsyncExitStack() as stack:
                fields = passed_fields(request.headers.items(), self.via, NOT_FORWARDED - {"if-none-match"} if fetch.conditional else NOT_FORWARDED)
                if found is not None:
                    fields += validators_of(found.stored.headers)
                fields += fetch.extra
                fetch.request_time = request_time = time.time()
                answer = await self.upstreams.ask("GET", request.target, fields, stack, b"", EDGE_HEADER in request.headers, on_interim)
                fetch.response_time = response_time = time.time()
                self.metrics.upstream(answer.tier)
                if answer.status == 304 and found is not None:  # our validators matched
                    fetch.revalidated = self.refresh(found, request_time, response_time, answer.headers)
                    fetch.shareable, fetch.vary = True, vary_names(found.stored.headers)
                    return
                stored = self.storable(request, answer, request_time, response_time)
                fetch.initial_age = initial_age(answer.headers, request_time, response_time)
                fetch.answer, fetch.spool = answer, Spool()
                fetch.shareable, fetch.vary = stored is not None, vary_names(answer.headers)
                fetch.ready.set()
                await answer.pump(self._spool_writer(fetch.spool, answer.tier))
                fetch.spool.finish()
            if stored is not None and self._keeps(answer, found, fetch.spool):
                await self.store.put(fetch.key, request.headers, replace(stored, size=fetch.spool.size), fetch.spool)
        except UpstreamError as exc:
            log.warning("edge %s: %s %s failed upstream: %s", self.name, request.method, fetch.key, exc)
            self._fail(fetch, exc)
        except Exception as exc:
            log.exception("edge %s: fetch of %s failed", self.name, fetch.key)
            self._fail(fetch, UpstreamError(502, f"fetch failed: {exc}"))
        finally:
            if self.inflight.get(fetch.key) is fetch:
                del self.inflight[fetch.key]
            fetch.ready.set()

    def _fail(self, fetch: Fetch, error: UpstreamError) -> None:
        """End a fetch that failed; one that had begun its body leaves its readers
        with a body that does not end cleanly (never a complete-looking one)."""
        fetch.error = error
        if fetch.spool is not None:
            fetch.spool.finish(error)
            self.metrics.event("truncated")

    def storable(self, request: Request, answer: Answer, request_time: float, response_time: float) -> Stored | None:
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

    def refresh(self, found: Found, request_time: float, response_time: float, headers: list[tuple[str, str]]) -> Found:
        stored = found.stored.refreshed(request_time, response_time, headers)
        self.store.update(found.key, stored)
        return replace(found, stored=stored)


def relay_interim(request: Request) -> Interim | None:
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
