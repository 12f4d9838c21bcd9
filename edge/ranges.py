"""Byte-range requests (RFC 9110 §14), shared by the origin server and the edge proxy.

Owns parsing the Range header against a representation of known size, the
satisfiable/unsatisfiable decision, the coalescing defence against abusive range
sets, and the exact framing of multipart/byteranges bodies. Pure: no I/O, no clock;
randomness only in new_boundary, and injectable there.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

DEFAULT_MAX_RANGES = 32
# Longest decimal position we convert; Python refuses int() beyond 4300 digits, and
# no real representation needs more than 20. Longer numbers make the header invalid.
_MAX_DIGITS = 4000
_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_UNIT = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 §5.5: VCHAR, obs-text, SP, HTAB


class RangeNotSatisfiable(Exception):
    """A valid Range none of whose ranges overlaps the representation (§14.1.1).

    The caller answers 416 with the `content_range` header value ("bytes */size").
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"no requested range is satisfiable for a representation of {size} bytes")
        self.size = size

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable byte range; both ends inclusive, as on the wire."""

    start: int
    end: int

    def __post_init__(self) -> None:
        _require_int("start", self.start)
        _require_int("end", self.end)
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid byte range {self.start}-{self.end}: need 0 <= start <= end")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The Content-Range field value (§14.4), e.g. "bytes 0-499/1234"."""
        _require_size(size)
        if self.end >= size:
            raise ValueError(f"range {self.start}-{self.end} does not fit a representation of {size} bytes")
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int, max_ranges: int = DEFAULT_MAX_RANGES) -> list[ByteRange] | None:
    """The ranges to serve for `Range: header` on a representation of `size` bytes.

    None means ignore the header and serve 200 with the whole representation: no
    header, a unit other than bytes, a syntactically invalid header (§14.2), or more
    than max_ranges ranges left after coalescing. Raises RangeNotSatisfiable when
    the header is valid but no range in it is satisfiable (answer 416). Otherwise
    the list is non-empty, in request order; if any ranges overlapped or touched,
    or there were too many, they are instead sorted and coalesced (§14.2 allows it).
    """
    _require_size(size)
    _require_int("max_ranges", max_ranges)
    if max_ranges < 1:
        raise ValueError(f"max_ranges must be at least 1, not {max_ranges}")
    specs = _parse_specs(header)
    if specs is None:
        return None
    ranges = [r for r in (_resolve(first, last, size) for first, last in specs) if r is not None]
    if not ranges:
        raise RangeNotSatisfiable(size)
    if len(ranges) > max_ranges or _needs_coalescing(ranges):
        ranges = coalesce(ranges)
    return ranges if len(ranges) <= max_ranges else None


def single_range(header: str | None) -> tuple[int | None, int | None] | None:
    """The one (first-pos, last-pos) of a valid Range asking for a single byte
    range; None for none, an invalid one, or several."""
    specs = _parse_specs(header)
    return specs[0] if specs is not None and len(specs) == 1 else None


def resolve_range(spec: tuple[int | None, int | None], size: int) -> ByteRange | None:
    """The satisfiable range a (first-pos, last-pos) spec denotes in `size` bytes."""
    _require_size(size)
    return _resolve(spec[0], spec[1], size)


def _parse_specs(header: str | None) -> list[tuple[int | None, int | None]] | None:
    """(first-pos, last-pos) pairs, first None for a suffix; None when to be ignored."""
    if header is None:
        return None
    unit, sep, range_set = header.strip(" \t").partition("=")
    if not sep or not _UNIT.fullmatch(unit) or unit.lower() != "bytes":
        return None
    specs: list[tuple[int | None, int | None]] = []
    for member in range_set.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # empty list elements are allowed (§5.6.1.2)
        spec = _parse_spec(member)
        if spec is None:
            return None
        specs.append(spec)
    return specs or None


def _parse_spec(member: str) -> tuple[int | None, int | None] | None:
    match = _SPEC.fullmatch(member)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if len(first_text) > _MAX_DIGITS or len(last_text) > _MAX_DIGITS:
        return None
    first = int(first_text) if first_text else None
    last = int(last_text) if last_text else None
    if first is None and last is None:
        return None  # "-" alone
    if first is not None and last is not None and last < first:
        return None  # §14.1.1: last-pos below first-pos makes the spec invalid
    return first, last


def _resolve(first: int | None, last: int | None, size: int) -> ByteRange | None:
    """The satisfiable ByteRange a valid spec denotes, or None (§14.1.1-14.1.2)."""
    if size == 0:
        return None
    if first is None:
        assert last is not None
        return ByteRange(max(size - last, 0), size - 1) if last > 0 else None
    if first >= size:
        return None
    return ByteRange(first, size - 1 if last is None else min(last, size - 1))


def _needs_coalescing(ranges: list[ByteRange]) -> bool:
    ordered = sorted(ranges, key=lambda r: r.start)
    return any(b.start <= a.end + 1 for a, b in itertools.pairwise(ordered))


def coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Sorted ranges with every overlapping or adjacent pair merged into one."""
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if merged and r.start <= merged[-1].end + 1:
            merged[-1] = ByteRange(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged


# -- multipart/byteranges (§14.6) ----------------------------------------------------


@dataclass(frozen=True)
class MultipartPlan:
    """Exact framing of a multipart/byteranges body.

    Send, in order: parts[0][0], the bytes of parts[0][1], parts[1][0], ..., then
    epilogue. The total is exactly content_length bytes.
    """

    content_type: str
    content_length: int
    parts: list[tuple[bytes, ByteRange]]
    epilogue: bytes


def plan_multipart(ranges: list[ByteRange], size: int, content_type: str | None, boundary: str) -> MultipartPlan:
    """Plan a 206 multipart/byteranges body for `ranges` of a `size`-byte representation.

    content_type is the representation's media type, repeated in each part; None
    omits that part header. It must be a field value (is_field_value). The
    boundary must be a valid RFC 2046 boundary.
    """
    _require_size(size)
    if not ranges:
        raise ValueError("a multipart/byteranges body needs at least one range")
    if not all(isinstance(r, ByteRange) for r in ranges):
        raise TypeError("ranges must be ByteRange instances")
    if content_type is not None and not is_field_value(content_type):
        raise ValueError(f"content_type must be a field value (visible latin-1, SP, HTAB): {content_type[:100]!r}")
    if not isinstance(boundary, str):
        raise TypeError(f"the multipart boundary must be a str, not {type(boundary).__name__}")
    if not _BCHARS.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary[:100]!r} (RFC 2046: 1-70 bchars, not ending in space)")
    type_line = b"" if content_type is None else f"Content-Type: {content_type}\r\n".encode("latin-1")
    parts = [(_preamble(boundary, type_line, r, size), r) for r in ranges]
    epilogue = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(pre) + r.length for pre, r in parts) + len(epilogue)
    header_boundary = boundary if _TOKEN.fullmatch(boundary) else f'"{boundary}"'
    return MultipartPlan(f"multipart/byteranges; boundary={header_boundary}", length, parts, epilogue)


def is_field_value(text: str) -> bool:
    """Could `text` be sent as a field value (RFC 9110 §5.5)? No controls but HTAB,
    nothing beyond latin-1."""
    return isinstance(text, str) and _FIELD_VALUE.fullmatch(text) is not None


def _preamble(boundary: str, type_line: bytes, r: ByteRange, size: int) -> bytes:
    head = f"\r\n--{boundary}\r\n".encode("ascii")
    return head + type_line + f"Content-Range: {r.content_range(size)}\r\n\r\n".encode("ascii")


class _RandomSource(Protocol):
    def getrandbits(self, k: int, /) -> int: ...


def new_boundary(rng: _RandomSource | None = None) -> str:
    """A fresh 32-hex-digit boundary; from `rng.getrandbits` when given, else secrets."""
    if rng is None:
        return secrets.token_hex(16)
    return f"{rng.getrandbits(128):032x}"


# -- argument checks -----------------------------------------------------------------


def _require_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")


def _require_size(size: int) -> None:
    _require_int("size", size)
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
