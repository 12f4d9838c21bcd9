"""Validators and conditional requests (RFC 9110 §5.6.7, §8.8, §13).

Owns HTTP-date formatting and parsing, entity-tag parsing and comparison, the
§13.2.2 evaluation of If-Match / If-Unmodified-Since / If-None-Match /
If-Modified-Since, and the If-Range decision (§13.1.5). Pure: no I/O and no clock;
callers pass every time they mean. Times are POSIX timestamps; HTTP-dates carry
whole seconds, so a Last-Modified with a fraction is compared by its floor, the
value format_http_date put on the wire.

Every field value a client or an upstream sends is taken as RFC 9110 says or
ignored, never raised on: a malformed date is no date, a malformed entity-tag
matches nothing. Only arguments of the wrong type, or timestamps out of range,
raise (TypeError, ValueError).
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY, _LONG, _MON = "|".join(_DAYS), "|".join(_LONG_DAYS), "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# Names match in any case (RFC 9111 §4.2: "a cache recipient SHOULD match the field
# value case-insensitively"); re.ASCII keeps the Kelvin sign and long s from folding.
_NOCASE = re.ASCII | re.IGNORECASE
_IMF = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MON}) ([0-9]{{4}}) {_TIME} GMT", _NOCASE)
_RFC850 = re.compile(rf"(?:{_LONG}), ([0-9]{{2}})-({_MON})-([0-9]{{2}}) {_TIME} GMT", _NOCASE)
_ASCTIME = re.compile(rf"(?:{_DAY}) ({_MON}) ([ 0-9][0-9]) {_TIME} ([0-9]{{4}})", _NOCASE)
_MONTH_NUMBERS = {name.lower(): number for number, name in enumerate(_MONTHS, 1)}
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()

_ETAGC = r"[\x21\x23-\x7e\x80-\U0010ffff]*"  # §8.8.3, obs-text widened past \xff
_ENTITY_TAG = re.compile(rf'(W/)?"({_ETAGC})"')
_LIST_MEMBER = re.compile(rf'(W/)?"({_ETAGC})"[ \t]*(?=,|\Z)')

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412


# -- HTTP-date (§5.6.7) ---------------------------------------------------------------


def format_http_date(ts: float) -> str:
    """IMF-fixdate for timestamp ts, fraction dropped: 784111777 -> 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    day, secs = _utc_date("ts", ts)
    hh, rest = divmod(secs, 3600)
    return (
        f"{_DAYS[day.weekday()]}, {day.day:02d} {_MONTHS[day.month - 1]} {day.year:04d} "
        f"{hh:02d}:{rest // 60:02d}:{rest % 60:02d} GMT"
    )


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """The timestamp of an IMF-fixdate, RFC 850 or asctime date; None for anything else.

    The grammar of §5.6.7 (exactly one space where the RFC has one), but day and
    month names and GMT in any case (RFC 9111 §4.2 asks caches to match dates
    case-insensitively); surrounding whitespace is ignored and the day-name is
    not cross-checked.
    An RFC 850 two-digit year is resolved per §5.6.7 against `now` when given
    (more than 50 years ahead means the previous century), else 70-99 -> 19xx and
    00-69 -> 20xx.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"HTTP-date must be a str, not {type(value).__name__}")
    text = value.strip(" \t")
    if m := _IMF.fullmatch(text):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(text):
        day, mon, yy, hh, mm, ss = m.groups()
        year = str(_rfc850_year(int(yy), now))
    elif m := _ASCTIME.fullmatch(text):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    return _timestamp(int(year), _MONTH_NUMBERS[mon.lower()], int(day), int(hh), int(mm), int(ss))


def _rfc850_year(yy: int, now: float | None) -> int:
    if now is None:
        return (1900 if yy >= 70 else 2000) + yy
    this_year = _utc_date("now", now)[0].year
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    """Seconds since the epoch, or None when a field is out of range (60 s = leap second)."""
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return float(calendar.timegm((year, month, day, hh, mm, ss)))


# -- entity tags (§8.8.3) ---------------------------------------------------------------


@dataclass(frozen=True)
class ETag:
    """An entity-tag; `tag` is the opaque text without its quotes. str() gives the wire form."""

    tag: str
    weak: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str):
            raise TypeError(f"entity-tag text must be a str, not {type(self.tag).__name__}")
        if not re.fullmatch(_ETAGC, self.tag):
            raise ValueError(f"invalid entity-tag text {self.tag[:100]!r}: no quotes, spaces or controls allowed")

    def __str__(self) -> str:
        return f'W/"{self.tag}"' if self.weak else f'"{self.tag}"'

    @classmethod
    def parse(cls, value: str) -> ETag | None:
        """One entity-tag such as '"abc"' or 'W/"abc"'; None when malformed."""
        if not isinstance(value, str):
            raise TypeError(f"entity-tag must be a str, not {type(value).__name__}")
        m = _ENTITY_TAG.fullmatch(value.strip(" \t"))
        return cls(m.group(2), m.group(1) is not None) if m else None


def parse_etag_list(value: str) -> list[ETag] | Literal["*"]:
    """The If-Match / If-None-Match field value: "*" or its entity-tags, malformed members skipped."""
    if not isinstance(value, str):
        raise TypeError(f"an entity-tag list must be a str, not {type(value).__name__}")
    if value.strip(" \t") == "*":
        return "*"
    tags: list[ETag] = []
    pos = 0
    while pos < len(value):
        if value[pos] in ", \t":
            pos += 1
        elif m := _LIST_MEMBER.match(value, pos):
            tags.append(ETag(m.group(2), m.group(1) is not None))
            pos = m.end()
        else:
            comma = value.find(",", pos)
            pos = len(value) if comma < 0 else comma + 1
    return tags


def strong_match(a: ETag, b: ETag) -> bool:
    """§8.8.3.2 strong comparison: neither weak and the opaque tags identical."""
    return not a.weak and not b.weak and a.tag == b.tag


def weak_match(a: ETag, b: ETag) -> bool:
    """§8.8.3.2 weak comparison: opaque tags identical, weakness ignored."""
    return a.tag == b.tag


# -- conditional requests (§13) -------------------------------------------------------


class HeaderSource(Protocol):
    def get(self, name: str, /) -> str | None: ...


def evaluate_preconditions(
    method: str,
    headers: HeaderSource,
    etag: str | None,
    last_modified: float | None,
    *,
    exists: bool = True,
    date: float | None = None,
) -> int | None:
    """The §13.2.2 outcome for a request on the selected representation.

    412 or 304 when a precondition fails, None to proceed. `etag` is the current
    entity-tag in wire form ('"abc"' or 'W/"abc"'); one that is not a valid
    entity-tag is no entity-tag: it matches nothing, though "*" still matches
    the representation. `exists` False means there is no current representation
    (If-Match fails, If-None-Match "*" passes). `date`, the stored response's Date,
    stands in for a missing Last-Modified in If-Modified-Since only (RFC 9111
    §4.3.2); If-Unmodified-Since needs a real Last-Modified.
    """
    current = _current_etag(etag)
    lm = None if last_modified is None else _whole_seconds("last_modified", last_modified)
    modified = lm if lm is not None or date is None else _whole_seconds("date", date)
    if_match = _header(headers, "If-Match")
    if if_match is not None:
        if not _any_match(parse_etag_list(if_match), current, exists, strong_match):
            return PRECONDITION_FAILED
    elif not _unmodified_since(_header(headers, "If-Unmodified-Since"), lm):
        return PRECONDITION_FAILED
    if_none_match = _header(headers, "If-None-Match")
    safe = method in ("GET", "HEAD")
    if if_none_match is not None:
        if _any_match(parse_etag_list(if_none_match), current, exists, weak_match):
            return NOT_MODIFIED if safe else PRECONDITION_FAILED
    elif safe and not _modified_since(_header(headers, "If-Modified-Since"), modified):
        return NOT_MODIFIED
    return None


def _any_match(
    tags: list[ETag] | Literal["*"], current: ETag | None, exists: bool, same: Callable[[ETag, ETag], bool]
) -> bool:
    if tags == "*":
        return exists
    return exists and current is not None and any(same(t, current) for t in tags)


def _unmodified_since(value: str | None, lm: int | None) -> bool:
    """§13.1.4: False only for a valid date older than Last-Modified; else ignored."""
    since = parse_http_date(value)
    return since is None or lm is None or lm <= since


def _modified_since(value: str | None, lm: int | None) -> bool:
    """§13.1.3: False only when Last-Modified is at or before a valid date; else ignored."""
    since = parse_http_date(value)
    return since is None or lm is None or lm > since


def if_range_allows(
    if_range: str | None, etag: str | None, last_modified: float | None, date_header: float | None = None
) -> bool:
    """§13.1.5: True when the Range may be honoured, False to send the whole 200.

    An entity-tag must strongly match the current strong etag. An HTTP-date must
    equal Last-Modified to the second, and when the response Date (date_header) is
    given Last-Modified counts as strong only if at least 1 s before it (§8.8.2.2).
    Anything unparseable is False. No If-Range at all is True.
    """
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    if '"' in value[:3]:
        given, current = ETag.parse(value), _current_etag(etag)
        return given is not None and current is not None and strong_match(given, current)
    since = parse_http_date(value)
    if since is None or last_modified is None:
        return False
    lm = _whole_seconds("last_modified", last_modified)
    if date_header is not None and lm > _whole_seconds("date_header", date_header) - 1:
        return False
    return lm == since


def _header(headers: HeaderSource, name: str) -> str | None:
    value = headers.get(name)
    return headers.get(name.lower()) if value is None else value


def _current_etag(etag: str | None) -> ETag | None:
    """The representation's entity-tag; None when it has none or a malformed one
    (§8.8.3: unquoted, `w/"x"`, `W"x"`...), which then matches no listed tag."""
    if etag is None:
        return None
    if not isinstance(etag, str):
        raise TypeError(f"etag must be a str in wire form like '\"abc\"', not {type(etag).__name__}")
    return ETag.parse(etag)


def _utc_date(name: str, ts: float) -> tuple[datetime.date, int]:
    """The UTC calendar date of ts and the whole seconds into that day."""
    days, secs = divmod(_whole_seconds(name, ts), 86400)
    try:
        return datetime.date.fromordinal(_EPOCH_ORDINAL + days), secs
    except (ValueError, OverflowError):
        raise ValueError(f"{name}={_shown(ts)} is outside years 1-9999, which HTTP-date cannot express") from None


def _whole_seconds(name: str, ts: float) -> int:
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(ts).__name__}")
    if isinstance(ts, float) and not math.isfinite(ts):
        raise ValueError(f"{name} must be finite, not {ts!r}")
    return math.floor(ts)


def _shown(ts: float) -> str:
    """ts for a message: a huge int by its size, since its repr may fail."""
    if isinstance(ts, int) and ts.bit_length() > 64:
        return f"a {ts.bit_length()}-bit integer"
    return repr(ts)
