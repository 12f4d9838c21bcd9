"""Answering GET and HEAD from a complete representation, wherever its bytes live.

Owns the part of HTTP that is the same for every tier and for the origin: the
preconditions (304, 412), If-Range, Range (206, multipart/byteranges, 416) and
HEAD, over a `BodySource` that can stream any byte span of the body: bytes in
memory, a file, or a spool still filling from upstream. The representation's
fields come from upstream, so none of them may make it fail: a malformed ETag
matches nothing, a Content-Type that cannot go into a part is left out of it.
"""

from __future__ import annotations

import os
from typing import AsyncIterator, Protocol

from .httpserver import Request, Response, simple_response
from .policy import first_value
from .ranges import ByteRange, RangeNotSatisfiable, is_field_value, new_boundary, parse_range, plan_multipart
from .spool import Spool
from .validators import evaluate_preconditions, if_range_allows, parse_http_date

FILE_CHUNK = 256 * 1024
# Fields a 304 repeats from the 200 it stands for (RFC 9110 §15.4.5).
CONDITIONAL_FIELDS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
CONDITIONAL_OR_RANGE = frozenset({*CONDITIONAL_FIELDS, "range"})
NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"})


class BodySource(Protocol):
    size: int

    def span(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the body."""
        ...


class BytesBody:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    async def span(self, start: int, end: int) -> AsyncIterator[bytes]:
        yield self.data[start:end]


class FileBody:
    """A body in an open file; reads come from the page cache, so they run inline."""

    def __init__(self, fileobj: "os.PathLike[str] | int | object", size: int) -> None:
        self.fd = fileobj.fileno() if hasattr(fileobj, "fileno") else int(fileobj)  # type: ignore[arg-type]
        self._keep = fileobj  # the file closes when the last reader lets go
        self.size = size

    async def span(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        while offset < end:
            chunk = os.pread(self.fd, min(FILE_CHUNK, end - offset), offset)
            if not chunk:
                raise OSError(f"cached body ended at {offset} of {end} bytes")
            offset += len(chunk)
            yield chunk


class SpoolBody:
    """A body still arriving from upstream; readers wait for the bytes they need."""

    def __init__(self, spool: Spool, size: int) -> None:
        self.spool = spool
        self.size = size

    def span(self, start: int, end: int) -> AsyncIterator[bytes]:
        return self.spool.reader(start, end)


def represent(request: Request, headers: list[tuple[str, str]], source: BodySource) -> Response:
    """The response to a GET or HEAD for a representation with `headers` (its
    end-to-end fields, including ETag and Last-Modified when it has them)."""
    if CONDITIONAL_OR_RANGE.isdisjoint(request.headers.names()):  # the common case, kept short
        return _whole(headers, source, request.method == "HEAD")
    conditional = any(name in request.headers for name in CONDITIONAL_FIELDS)
    etag = first_value(headers, "etag")
    last_modified = parse_http_date(first_value(headers, "last-modified"))
    outcome = _preconditions(request, headers, etag, last_modified) if conditional else None
    if outcome == 304:
        return Response(304, [(k, v) for k, v in headers if k.lower() in NOT_MODIFIED_FIELDS])
    if outcome is not None:
        return simple_response(outcome, "precondition failed")
    ranges = _requested_ranges(request, etag, last_modified, source.size)
    if isinstance(ranges, Response):
        return ranges
    head = request.method == "HEAD"
    if ranges is None:
        return _whole(headers, source, head)
    if len(ranges) == 1:
        return _single(headers, source, ranges[0], head)
    return _multipart(headers, source, ranges, head)


def _preconditions(request: Request, headers: list[tuple[str, str]], etag: str | None, last_modified: float | None) -> int | None:
    """304, 412 or None; without Last-Modified, If-Modified-Since is judged by the
    Date (RFC 9111 §4.3.2)."""
    date = parse_http_date(first_value(headers, "date")) if last_modified is None else None
    return evaluate_preconditions(request.method, request.headers, etag, last_modified, date=date)


def _requested_ranges(request: Request, etag: str | None, last_modified: float | None, size: int) -> list[ByteRange] | None | Response:
    header = request.headers.get("range")
    if header is None or request.method != "GET":  # Range is defined for GET only (RFC 9110 §14.2)
        return None
    if not if_range_allows(request.headers.get("if-range"), etag, last_modified):
        return None
    try:
        return parse_range(header, size)
    except RangeNotSatisfiable as exc:
        return simple_response(416, str(exc), [("Content-Range", f"bytes */{size}")])


def _whole(headers: list[tuple[str, str]], source: BodySource, head: bool) -> Response:
    fields = [*headers, ("Content-Length", str(source.size))]
    if head:
        return Response(200, fields)
    if isinstance(source, BytesBody):
        return Response(200, fields, source.data)
    return Response(200, fields, source.span(0, source.size))


def _single(headers: list[tuple[str, str]], source: BodySource, part: ByteRange, head: bool) -> Response:
    fields = [*headers, ("Content-Range", part.content_range(source.size)), ("Content-Length", str(part.length))]
    if head:
        return Response(206, fields)
    if isinstance(source, BytesBody):
        return Response(206, fields, source.data[part.start : part.end + 1])
    return Response(206, fields, source.span(part.start, part.end + 1))


def _multipart(headers: list[tuple[str, str]], source: BodySource, ranges: list[ByteRange], head: bool) -> Response:
    content_type = first_value(headers, "content-type")
    if content_type is not None and not is_field_value(content_type):
        content_type = None  # nothing a part's header could carry
    plan = plan_multipart(ranges, source.size, content_type, new_boundary())
    fields = [(k, v) for k, v in headers if k.lower() != "content-type"]
    fields += [("Content-Type", plan.content_type), ("Content-Length", str(plan.content_length))]
    if head:
        return Response(206, fields)

    async def body() -> AsyncIterator[bytes]:
        for preamble, part in plan.parts:
            yield preamble
            async for chunk in source.span(part.start, part.end + 1):
                yield chunk
        yield plan.epilogue

    return Response(206, fields, body())
