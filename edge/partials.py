"""Range requests the edge holds no whole response for: answered from the pieces
it keeps, or fetched upstream as ranges and kept (RFC 9111 §3.3-§3.4).

Owns the flow around `pieces`: a GET for one bounded byte range that misses goes
upstream with that Range (not as a fetch of the whole representation, which an
open-ended range such as a player's `bytes=0-` still is); a 206 that may be kept
becomes a piece in memory; a later range the pieces hold is a hit; a range, or a
plain GET, that they hold only part of asks upstream for the one range that holds
every missing byte, with `If-Range` naming the pieces' strong entity-tag, so that a
changed representation comes back whole as a 200 rather than as a piece of another
one. Pieces that add up to the whole representation are stored as a complete 200
in the tiers. Anything else (several ranges, `If-Range` from the client, a 200, a
206 that may not be kept) is left to the usual path or relayed as it came.
"""

from __future__ import annotations

import time
from dataclasses import replace

from .fetcher import Fetch, Fetcher
from .messages import Request, Response
from .metrics import EdgeMetrics
from .pieces import NOT_KEPT, Pieces, keepable_piece, parse_content_range, range_value, strong_etag
from .policy import RequestRules, Reuse, first_value, request_rules, reuse
from .ranges import ByteRange, resolve_range, single_range
from .represent import BytesBody, represent
from .spool import Spool
from .store import CacheStore
from .tiers import Partial

Outcome = tuple[Response, str, str]  # the answer, its Cache-Status, and the detail


class PiecesBody:
    """The held spans of pieces as a body source (only held spans are asked for)."""

    def __init__(self, pieces: Pieces) -> None:
        self.pieces = pieces
        self.size = pieces.size

    async def span(self, start: int, end: int):  # type: ignore[no-untyped-def]
        yield self.pieces.read(ByteRange(start, end - 1))


class RangeMisses:
    def __init__(self, store: CacheStore, fetcher: Fetcher, metrics: EdgeMetrics) -> None:
        self.store, self.fetcher, self.metrics = store, fetcher, metrics

    async def serve(self, request: Request, rules: RequestRules) -> Outcome | Fetch | None:
        """The answer to a GET that found no whole stored response, when pieces
        answer it or a ranged fetch is the way to; a Fetch for the usual answer from
        a fetch; None to leave the request to the usual path."""
        headers = request.headers
        if request.method != "GET" or "if-range" in headers or "authorization" in headers:
            return None
        asked = headers.get("range")
        spec = single_range(asked) if asked is not None else None
        if asked is not None and spec is None:
            return None  # several ranges, or a Range to ignore
        key = request.target
        kept = self._fresh_pieces(key, rules)
        if kept is None:
            if spec is None or key in self.fetcher.inflight or rules.only_if_cached or not self._small(spec):
                return None  # the usual whole fetch: a plain GET, one in flight, or a range it is better for
            first, last = spec
            ranged = f"bytes={'' if first is None else first}-{'' if last is None else last}"
            return await self._fetch(request, None, (("Range", ranged),), spec)
        size = kept.pieces.size
        wanted = resolve_range(spec, size) if spec is not None else ByteRange(0, size - 1)
        if wanted is None:
            return None  # unsatisfiable: the usual path answers 416
        if kept.pieces.covers(wanted):
            self.metrics.hit("memory")
            return self._answer(request, kept), "hit", "partial"
        if rules.only_if_cached:
            return None
        missing = kept.pieces.missing(wanted)
        assert missing is not None
        if not self.store.memory.fits(missing.length):
            return None  # too much to keep in pieces: the usual whole fetch, stored on disk
        ask = (("Range", range_value(missing, size)), ("If-Range", kept.pieces.etag))
        return await self._fetch(request, kept, ask, spec)

    def _small(self, spec: tuple[int | None, int | None]) -> bool:
        """A range whose piece could be kept: its length is known before the answer
        (not `bytes=N-`, which is as good as the whole) and fits in memory."""
        first, last = spec
        if last is None:
            return False
        return self.store.memory.fits(last if first is None else last - first + 1)

    def _fresh_pieces(self, key: str, rules: RequestRules) -> Partial | None:
        """The pieces kept for `key` while fresh; stale ones are dropped, not
        revalidated (a fresh range asks again)."""
        kept = self.store.memory.get_partial(key)
        if kept is None:
            return None
        if reuse(kept.stored.rules, kept.stored.age(time.time()), rules) is Reuse.FRESH:
            return kept
        self.store.memory.remove_partial(key)
        return None

    def _answer(self, request: Request, kept: Partial) -> Response:
        age = kept.stored.age(time.time())
        return represent(request, [*kept.stored.headers, ("Age", str(int(age)))], PiecesBody(kept.pieces))

    async def _fetch(
        self, request: Request, kept: Partial | None, ask: tuple[tuple[str, str], ...], spec: tuple[int | None, int | None] | None
    ) -> Outcome | Fetch:
        """Fetch a range; keep the piece when it may be kept, and answer from the
        pieces when they now hold the client's range `spec`. No spec: the client
        asked for the whole representation, so a piece that does not complete it
        is no answer, and the usual whole fetch follows."""
        fetch = self.fetcher.start(request.target, request, None, shared=False, relay=True, extra=ask)
        await fetch.ready.wait()
        answer = fetch.answer
        if answer is None or answer.status != 206:
            return fetch  # a 200 (the representation changed, or no ranges upstream), an error
        partial = await self._piece_of(request, fetch, kept)
        if partial is not None and partial.pieces.complete:
            return await self._complete(request, partial, answer.tier)
        if partial is not None:
            self.store.memory.put_partial(request.target, partial)
            self.metrics.event("piece-stored")
            wanted = resolve_range(spec, partial.pieces.size) if spec is not None else None
            if wanted is not None and partial.pieces.covers(wanted):
                return self._answer(request, partial), "fwd=partial; fwd-status=206", answer.tier
        if spec is None:
            return await self.fetcher.fetch_for(request.target, request, None)
        return fetch  # the upstream's 206 as it came

    async def _piece_of(self, request: Request, fetch: Fetch, kept: Partial | None) -> Partial | None:
        """The pieces with this fetch's 206 added, when it may be kept: one part,
        a Content-Range that matches its length, a strong entity-tag, storable
        fields, whole, and small enough for memory. Pieces of another entity-tag or
        length are replaced, not combined (RFC 9110 §14.5)."""
        answer, spool = fetch.answer, fetch.spool
        assert answer is not None and spool is not None
        content_range = parse_content_range(first_value(answer.headers, "content-range"))
        if content_range is None or answer.size != content_range.span.length or answer.tier == "peer":
            return None
        if content_range.complete > 1 << 62 or not self.store.memory.fits(answer.size):
            return None
        if not keepable_piece(request_rules(request.headers), answer.headers, "authorization" in request.headers):
            return None
        await spool.wait_done()
        if not spool.complete or spool.size != answer.size:
            return None
        etag = strong_etag(answer.headers)
        assert etag is not None
        pieces = kept.pieces if kept is not None and kept.pieces.accepts(etag, content_range.complete) else Pieces(content_range.complete, etag)
        pieces = pieces.add(content_range.first, spool.read_all())
        fields = [(name, value) for name, value in answer.headers if name.lower() not in NOT_KEPT]
        stored = self.fetcher.storable(request, replace(answer, status=200, headers=fields), fetch.request_time, fetch.response_time)
        return Partial(stored, pieces) if stored is not None else None

    async def _complete(self, request: Request, partial: Partial, tier: str) -> Outcome:
        """Pieces that now make the whole representation: stored as a 200, and the
        client answered from it."""
        whole = partial.pieces.whole()
        spool = Spool()
        spool.write(whole)
        spool.finish()
        stored = replace(partial.stored, size=len(whole))
        await self.store.put(request.target, request.headers, stored, spool)
        self.metrics.event("pieces-completed")
        age = stored.age(time.time())
        response = represent(request, [*stored.headers, ("Age", str(int(age)))], BytesBody(whole))
        return response, "fwd=partial; fwd-status=206", tier
