"""Partial content a shared cache keeps (RFC 9111 §3.3-§3.4, RFC 9110 §14.5).

Owns what is kept of a representation that arrived as 206 responses (`Pieces`:
the byte spans held so far, its complete length and its strong entity-tag), reading
a Content-Range, adding a piece, whether a range is held and which single range
fetches every byte of it that is not, when a 206 may be kept at all, and when two
pieces may be combined: only when both carry the same strong entity-tag and
complete length (§14.5), since nothing else shows that they are parts of one
representation. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .policy import RequestRules, first_value, list_members, field_values, response_rules, storable
from .ranges import ByteRange
from .validators import ETag

MAX_DIGITS = 19  # no representation is 10**19 bytes long; a longer number is a lie
_NUMBER = f"([0-9]{{1,{MAX_DIGITS}}})"
_CONTENT_RANGE = re.compile(rf"[ \t]*bytes[ \t]+{_NUMBER}-{_NUMBER}/{_NUMBER}[ \t]*", re.IGNORECASE)
NOT_KEPT = frozenset({"content-range", "content-length"})  # they describe one piece, not the representation


@dataclass(frozen=True)
class ContentRange:
    """A 206's `Content-Range: bytes first-last/complete`, both ends inclusive."""

    first: int
    last: int
    complete: int

    @property
    def span(self) -> ByteRange:
        return ByteRange(self.first, self.last)


def parse_content_range(value: str | None) -> ContentRange | None:
    """The Content-Range of a single-part 206 (RFC 9110 §14.4); None when absent,
    malformed, unsatisfied (`*/n`), of unknown complete length, or inconsistent."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value)
    if match is None:
        return None
    first, last, complete = (int(text) for text in match.groups())
    if not first <= last < complete:
        return None
    return ContentRange(first, last, complete)


def strong_etag(headers: list[tuple[str, str]]) -> str | None:
    """The response's entity-tag in wire form when it is a well-formed strong one."""
    value = first_value(headers, "etag")
    tag = ETag.parse(value) if value is not None else None
    return str(tag) if tag is not None and not tag.weak else None


def keepable_piece(request: RequestRules, headers: list[tuple[str, str]], has_authorization: bool) -> bool:
    """May this 206 be kept as a piece? When a 200 with its fields could be stored
    (§3.3 applies the same rules), it has a strong entity-tag to combine by, and it
    does not vary (pieces of one URL are kept as one representation)."""
    if strong_etag(headers) is None or list_members(field_values(headers, "vary")):
        return False
    return storable("GET", 200, request, headers, has_authorization, response_rules(200, headers).lifetime)


def range_value(wanted: ByteRange, size: int) -> str:
    """The Range field value that asks for `wanted` of a `size`-byte representation."""
    return f"bytes={wanted.start}-" if wanted.end == size - 1 else f"bytes={wanted.start}-{wanted.end}"


@dataclass(frozen=True)
class Pieces:
    """The byte spans held of one representation: sorted, neither overlapping nor
    touching (adjacent spans are joined)."""

    size: int
    etag: str
    spans: tuple[tuple[int, bytes], ...] = ()

    @property
    def held(self) -> int:
        return sum(len(data) for _, data in self.spans)

    @property
    def complete(self) -> bool:
        return len(self.spans) == 1 and self.spans[0][0] == 0 and len(self.spans[0][1]) == self.size

    def accepts(self, etag: str | None, size: int) -> bool:
        """May a piece with this entity-tag and complete length join these (§14.5)?"""
        return etag == self.etag and size == self.size

    def add(self, start: int, data: bytes) -> Pieces:
        """These pieces and `data` at `start`, joined where they meet; the new bytes
        win where they overlap (the same representation, so they are the same)."""
        end = start + len(data)
        if not data or start < 0 or end > self.size:
            raise ValueError(f"a piece {start}-{end - 1} does not fit a representation of {self.size} bytes")
        kept, first, last = [], start, end
        for offset, held in self.spans:
            if offset + len(held) < start or offset > end:
                kept.append((offset, held))
            else:
                first, last = min(first, offset), max(last, offset + len(held))
        joined = bytearray(last - first)
        for offset, held in self.spans:
            if first <= offset and offset + len(held) <= last:
                joined[offset - first : offset - first + len(held)] = held
        joined[start - first : end - first] = data
        spans = sorted([*kept, (first, bytes(joined))])
        return Pieces(self.size, self.etag, tuple(spans))

    def covers(self, wanted: ByteRange) -> bool:
        return any(offset <= wanted.start and wanted.end < offset + len(held) for offset, held in self.spans)

    def read(self, wanted: ByteRange) -> bytes:
        for offset, held in self.spans:
            if offset <= wanted.start and wanted.end < offset + len(held):
                return held[wanted.start - offset : wanted.end - offset + 1]
        raise ValueError(f"bytes {wanted.start}-{wanted.end} are not held")

    def missing(self, wanted: ByteRange) -> ByteRange | None:
        """The smallest range that holds every byte of `wanted` not held; None when
        all are held."""
        gaps: list[tuple[int, int]] = []
        position = wanted.start
        for offset, held in self.spans:
            if offset > wanted.end:
                break
            if offset > position:
                gaps.append((position, min(offset - 1, wanted.end)))
            position = max(position, offset + len(held))
        if position <= wanted.end:
            gaps.append((position, wanted.end))
        return ByteRange(gaps[0][0], gaps[-1][1]) if gaps else None

    def whole(self) -> bytes:
        if not self.complete:
            raise ValueError("the representation is not complete")
        return self.spans[0][1]
