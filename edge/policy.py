"""Cache rules for a shared cache (RFC 9111, with RFC 5861's stale extensions), as
pure functions.

Owns every caching decision and nothing else: which response a shared cache may
store and which of its fields (§3, §3.1, §3.5), how long it stays fresh, explicitly
or heuristically (§4.2.1, §4.2.2), how old it is (§4.2.3), whether a stored
response may answer a request given both sides' directives (§4.2.4, §5.2), whether
it may be served stale after an error (RFC 5861 §4), how a 304 updates it (§3.2),
which stored responses an unsafe request invalidates (§4.4), when a HEAD answer
freshens a stored response (§4.3.5) and when a POST answer may serve later GETs
(RFC 9110 §9.3.3). The secondary key that Vary names is `vary`'s. No I/O: times come in as seconds since the epoch. Field
values come from clients and upstreams, so none of them makes a function here
raise: what cannot be read is taken as the RFCs say (stale, ignored, no match).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from email.utils import formatdate
from typing import Iterable, Mapping, Protocol
from urllib.parse import SplitResult, urljoin, urlsplit

import http_sf

from .validators import parse_http_date

Fields = Iterable[tuple[str, str]]
Directives = Mapping[str, "str | None"]

# RFC 9110 §7.6.1: fields meaningful only for one connection.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"}
)
# RFC 9110 §15.1: statuses a cache may store and give heuristic freshness.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose semantics this cache implements, for `must-understand` (§5.2.2.3).
UNDERSTOOD = HEURISTICALLY_CACHEABLE | {302, 303, 307, 400, 403, 500, 502, 503, 504}
# RFC 9110 §9.2.1.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Fields a cache keeps out of what it stores: framing it recomputes, the Age it
# recomputes (§4.2.3), and the Cache-Status of earlier hops (RFC 9211).
NOT_STORED = frozenset({"content-length", "age", "cache-status"})
# §3.2: a 304 updates every stored field but these.
NOT_UPDATED = NOT_STORED | {"content-range"}

# Directives whose argument is delta-seconds (an Integer in CDN-Cache-Control).
INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "min-fresh", "max-stale"})
DELTA_SECONDS_CAP = 2**31  # §1.2.2
HEURISTIC_FRACTION = 0.1  # §4.2.2: "10% of the interval since Last-Modified"
HEURISTIC_CAP = 86400.0  # a day, so an old file is not kept for months on a guess
UNBOUNDED = math.inf
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # str.lower() folds non-ASCII too
_UNQUOTED = re.compile(r'("(?:[^"\\]|\\.)*"?)|[^"]+', re.DOTALL)  # group 1: a quoted string


# -- parsing -----------------------------------------------------------------------------


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Directives of one or more Cache-Control field values, names lower-cased
    (§5.2: names are case-insensitive; token and quoted-string arguments are both
    accepted). When a directive repeats, the first occurrence wins (§4.2.1).
    Members whose name is not a token are ignored."""
    directives: dict[str, str | None] = {}
    for value in values:
        for member in _split_members(value):
            name, sep, argument = member.partition("=")
            name = name.strip().lower()
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                continue
            directives.setdefault(name, _unquote(argument.strip()) if sep else None)
    return directives


def _split_members(value: str) -> list[str]:
    """Split on commas outside quoted strings, where a backslash escapes the next
    character (RFC 9110 §5.6.4)."""
    members, current, quoted, escaped = [], [], False, False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    return [m for m in members if m.strip()]


def _unquote(argument: str) -> str:
    if len(argument) >= 2 and argument[0] == argument[-1] == '"':
        return re.sub(r"\\(.)", r"\1", argument[1:-1])
    return argument


def cdn_cache_control(values: list[str]) -> dict[str, str | None] | None:
    """The directives of CDN-Cache-Control (RFC 9213), None when it is absent,
    empty or not a valid Structured Fields dictionary (§2.1: then it is ignored).
    Directive names are case-insensitive (RFC 9111 §5.2, which RFC 9213 §2.1
    builds on), so `Max-Age=60` counts: letters outside quoted strings are read
    lower-cased. A directive whose value has the wrong type is dropped (§2.1), but
    the field still stands in for Cache-Control; bare names (true) have no
    argument, integers and strings become the argument text."""
    if not values:
        return None
    text = _UNQUOTED.sub(lambda m: m.group(1) or m.group().translate(ASCII_LOWER), ", ".join(values))
    try:
        parsed = http_sf.parse(text.encode("latin-1"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError):
        return None
    directives: dict[str, str | None] = {}
    for name, (value, _parameters) in parsed.items():
        if value is True:
            directives[name] = None
        elif isinstance(value, int) and not isinstance(value, bool):
            directives[name] = str(value) if name in INTEGER_DIRECTIVES else None
        elif isinstance(value, str) and name not in INTEGER_DIRECTIVES:
            directives[name] = value
    return directives if parsed else None


def response_directives(headers: list[tuple[str, str]]) -> tuple[dict[str, str | None], bool]:
    """The directives this cache follows for a response, and whether they came
    from CDN-Cache-Control: a valid, non-empty CDN-Cache-Control replaces both
    Cache-Control and Expires (RFC 9213 §2.2)."""
    targeted = cdn_cache_control(field_values(headers, "cdn-cache-control"))
    if targeted is not None:
        return targeted, True
    return parse_cache_control(field_values(headers, "cache-control")), False


def delta_seconds(value: str | None) -> int | None:
    """A delta-seconds argument (§1.2.2); None when absent or not a non-negative
    integer. Values too large to represent become 2**31 (int() refuses 4300 digits)."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    digits = value.lstrip("0")
    return DELTA_SECONDS_CAP if len(digits) > 10 else min(int(digits or "0"), DELTA_SECONDS_CAP)


def field_names(argument: str | None) -> frozenset[str]:
    """The field names of a qualified `no-cache="a, b"` or `private="a"` (§5.2.2.4, §5.2.2.7)."""
    if not argument:
        return frozenset()
    return frozenset(name.strip().lower() for name in argument.split(",") if name.strip())


def field_values(headers: Fields, name: str) -> list[str]:
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def first_value(headers: Fields, name: str) -> str | None:
    """The first value of a field, or None."""
    name = name.lower()
    return next((value for key, value in headers if key.lower() == name), None)


def list_members(values: Iterable[str]) -> list[str]:
    """The members of a comma-separated list field, over all its field lines."""
    return [member.strip() for value in values for member in value.split(",") if member.strip()]


def end_to_end(headers: Fields) -> list[tuple[str, str]]:
    """The fields a proxy passes on or stores: without hop-by-hop fields, nor those
    the Connection field names (RFC 9110 §7.6.1)."""
    headers = list(headers)
    named = {member.lower() for member in list_members(field_values(headers, "connection"))}
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


# -- the request's side ------------------------------------------------------------------


class RequestHeaders(Protocol):
    def get_all(self, name: str) -> list[str]: ...

    def __contains__(self, name: object) -> bool: ...


@dataclass(frozen=True)
class RequestRules:
    """What a request's Cache-Control (or Pragma) asks of the cache (§5.2.1)."""

    no_cache: bool = False
    no_store: bool = False
    max_age: float | None = None
    max_stale: float | None = None  # UNBOUNDED for a bare max-stale
    min_fresh: float | None = None
    only_if_cached: bool = False
    stale_if_error: float | None = None  # RFC 5861 §4, the client's side


NO_REQUEST_RULES = RequestRules()


def request_rules(headers: RequestHeaders) -> RequestRules:
    """The request directives. `Pragma: no-cache` counts as `no-cache` only when the
    request has no Cache-Control (§5.4). An invalid argument is treated as the
    most conservative reading: max-age=0, min-fresh ignored, max-stale=0."""
    if "cache-control" not in headers:
        if "pragma" in headers and "no-cache" in [m.lower() for m in list_members(headers.get_all("pragma"))]:
            return RequestRules(no_cache=True)
        return NO_REQUEST_RULES
    directives = parse_cache_control(headers.get_all("cache-control"))
    max_stale: float | None = None
    if "max-stale" in directives:
        argument = directives["max-stale"]
        max_stale = UNBOUNDED if argument is None else float(delta_seconds(argument) or 0)
    return RequestRules(
        no_cache="no-cache" in directives,
        no_store="no-store" in directives,
        max_age=_argument(directives, "max-age", invalid=0.0),
        max_stale=max_stale,
        min_fresh=_argument(directives, "min-fresh", invalid=None),
        only_if_cached="only-if-cached" in directives,
        stale_if_error=_argument(directives, "stale-if-error", invalid=None),
    )


def _argument(directives: Directives, name: str, invalid: float | None) -> float | None:
    if name not in directives:
        return None
    value = delta_seconds(directives[name])
    return invalid if value is None else float(value)


# -- the response's side: storing --------------------------------------------------------


def storable(method: str, status: int, request: RequestRules, headers: Fields, has_authorization: bool, lifetime: float) -> bool:
    """May a shared cache store this response (§3)? Only final responses to GET;
    never a 206 as a whole response (`pieces.keepable_piece` keeps it as a piece)
    nor a 304; not when either side says no-store (unless must-understand is
    honoured, §5.2.2.3) nor private; for a request with Authorization, only when the response allows
    it (§3.5); only with explicit freshness, `public`, or a heuristically
    cacheable status; and not when it could never be reused: `Vary: *` (§4.1),
    or no freshness left and no validator to revalidate it with."""
    if method != "GET" or status < 200 or status in (206, 304):
        return False
    headers = list(headers)
    directives, targeted = response_directives(headers)
    if "must-understand" in directives:
        if status not in UNDERSTOOD:
            return False
    elif "no-store" in directives:
        return False
    if request.no_store or ("private" in directives and directives["private"] is None):
        return False
    if has_authorization and not {"public", "s-maxage", "must-revalidate"} & directives.keys():
        return False
    if "*" in list_members(field_values(headers, "vary")):
        return False  # it could never be reused (§4.1)
    expires = not targeted and first_value(headers, "expires") is not None
    if not ({"public", "max-age", "s-maxage"} & directives.keys() or expires or status in HEURISTICALLY_CACHEABLE):
        return False
    return lifetime > 0 or bool(validators_of(headers))


def stored_fields(headers: list[tuple[str, str]], received_at: float) -> list[tuple[str, str]]:
    """The fields kept with a stored response (§3.1): all end-to-end ones but those
    that `private="..."` (for a shared cache) or `no-cache="..."` name (those may
    not be reused without revalidation, §5.2.2.4, so they are not kept), and with a
    Date added when the upstream sent none (RFC 9110 §6.6.1)."""
    directives, _ = response_directives(headers)
    dropped = NOT_STORED | field_names(directives.get("private")) | field_names(directives.get("no-cache"))
    kept = [(k, v) for k, v in end_to_end(headers) if k.lower() not in dropped]
    if first_value(kept, "date") is None:
        kept.append(("Date", http_date(received_at)))
    return kept


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


# -- freshness and age -------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseRules:
    """What a stored response's own fields say about reusing it."""

    lifetime: float
    heuristic: bool = False
    must_revalidate: bool = False  # must-revalidate, proxy-revalidate, s-maxage (§5.2.2.2, .8, .10)
    no_cache: bool = False  # unqualified no-cache: validate before every reuse (§5.2.2.4)
    stale_while_revalidate: float = 0.0  # RFC 5861 §3
    stale_if_error: float = 0.0  # RFC 5861 §4


def response_rules(status: int, headers: Fields) -> ResponseRules:
    headers = list(headers)
    directives, targeted = response_directives(headers)
    lifetime, heuristic = freshness_lifetime(status, headers, directives, use_expires=not targeted)
    return ResponseRules(
        lifetime=lifetime,
        heuristic=heuristic,
        must_revalidate=bool({"must-revalidate", "proxy-revalidate", "s-maxage"} & directives.keys()),
        no_cache="no-cache" in directives and not directives["no-cache"],
        stale_while_revalidate=float(delta_seconds(directives.get("stale-while-revalidate")) or 0),
        stale_if_error=float(delta_seconds(directives.get("stale-if-error")) or 0),
    )


def freshness_lifetime(status: int, headers: list[tuple[str, str]], directives: Directives, use_expires: bool = True) -> tuple[float, bool]:
    """(lifetime, heuristic?) per §4.2.1: s-maxage, then max-age, then Expires minus
    Date. A present but invalid max-age or s-maxage, an Expires that cannot be
    parsed, and several Expires lines all mean already stale. With none of these,
    §4.2.2's heuristic: a tenth of the time since Last-Modified, for heuristically
    cacheable statuses or `public` responses."""
    for name in ("s-maxage", "max-age"):
        if name in directives:
            value = delta_seconds(directives[name])
            return (0.0 if value is None else float(value)), False
    expires = field_values(headers, "expires") if use_expires else []
    if expires:
        expiry = parse_http_date(expires[0]) if len(expires) == 1 else None
        date = parse_http_date(first_value(headers, "date"))
        if expiry is None or date is None:
            return 0.0, False
        return max(0.0, expiry - date), False
    if status in HEURISTICALLY_CACHEABLE or "public" in directives:
        modified = parse_http_date(first_value(headers, "last-modified"))
        date = parse_http_date(first_value(headers, "date"))
        if modified is not None and date is not None and date > modified:
            return min(HEURISTIC_CAP, (date - modified) * HEURISTIC_FRACTION), True
    return 0.0, False


def initial_age(headers: Fields, request_time: float, response_time: float) -> float:
    """corrected_initial_age of §4.2.3, from the response's Date and Age and the
    time the request took. An Age that is not a non-negative integer is ignored;
    of a list, the first member counts (§5.1); a huge one is capped at 2**31."""
    headers = list(headers)
    date = parse_http_date(first_value(headers, "date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    ages = list_members(field_values(headers, "age"))
    age_value = delta_seconds(ages[0]) if ages else None
    corrected_age_value = (age_value or 0) + max(0.0, response_time - request_time)
    return max(apparent_age, corrected_age_value)


# -- reuse -------------------------------------------------------------------------------


class Reuse(enum.Enum):
    FRESH = "fresh"  # serve it
    STALE_ALLOWED = "stale"  # stale, but the client's max-stale accepts it (§5.2.1.2)
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # serve it, revalidate in the background
    VALIDATE = "validate"  # ask upstream first (a conditional request)


def reuse(rules: ResponseRules, age: float, request: RequestRules) -> Reuse:
    """Whether a stored response of `age` seconds may answer a request (§4, §4.2.4,
    §5.2, RFC 5861 §3)."""
    if request.no_cache or rules.no_cache:
        return Reuse.VALIDATE
    if request.max_age is not None and age > request.max_age:
        return Reuse.VALIDATE
    fresh_for = rules.lifetime - age
    if request.min_fresh is not None and fresh_for < request.min_fresh:
        return Reuse.VALIDATE
    if fresh_for > 0:
        return Reuse.FRESH
    if rules.must_revalidate:
        return Reuse.VALIDATE
    if request.max_stale is not None and -fresh_for <= request.max_stale:
        return Reuse.STALE_ALLOWED
    if -fresh_for < rules.stale_while_revalidate:
        return Reuse.STALE_WHILE_REVALIDATE
    return Reuse.VALIDATE


def stale_on_error(rules: ResponseRules, age: float, request: RequestRules, disconnected: bool) -> bool:
    """May a stored response stand in for an upstream that failed? Never when it
    must be revalidated (must-revalidate, proxy-revalidate, s-maxage, no-cache).
    Otherwise within stale-if-error (either side's, RFC 5861 §4), or for any
    staleness when the upstream could not be reached at all (§4.2.4)."""
    if rules.must_revalidate or rules.no_cache:
        return False
    if disconnected:
        return True
    window = max(rules.stale_if_error, request.stale_if_error or 0.0)
    return age - rules.lifetime <= window


# -- validation and invalidation ---------------------------------------------------------


def validators_of(headers: Fields) -> list[tuple[str, str]]:
    """The conditional fields that revalidate a stored response (§4.3.1)."""
    headers = list(headers)
    fields = []
    etag = first_value(headers, "etag")
    if etag is not None:
        fields.append(("If-None-Match", etag))
    modified = first_value(headers, "last-modified")
    if modified is not None and parse_http_date(modified) is not None:
        fields.append(("If-Modified-Since", modified))
    return fields


def updated_fields(stored: Fields, not_modified: Fields) -> list[tuple[str, str]]:
    """The stored fields after a 304 (§3.2, §4.3.4): each field the 304 carries
    replaces the stored one, except framing and the fields never stored."""
    update = [(k, v) for k, v in end_to_end(not_modified) if k.lower() not in NOT_UPDATED]
    names = {k.lower() for k, _ in update}
    return [(k, v) for k, v in stored if k.lower() not in names] + update


def validator_matches(stored: Fields, not_modified: Fields) -> bool:
    """Does a 304 speak for this stored response (§4.3.4)? Not when both carry
    ETags and they differ."""
    new, old = first_value(not_modified, "etag"), first_value(stored, "etag")
    return new is None or old is None or new.removeprefix("W/") == old.removeprefix("W/")


def head_freshens(stored: Fields, stored_size: int, head: Fields, head_size: int | None) -> bool:
    """May a 200 answer to HEAD update this stored GET response (§4.3.5)? When each
    validator the HEAD answer carries (ETag, Last-Modified) equals the stored one,
    and its Content-Length, if any, is the stored body's size; otherwise the stored
    response stays stale."""
    stored, head = list(stored), list(head)
    for name in ("etag", "last-modified"):
        value = first_value(head, name)
        if value is not None and value != first_value(stored, name):
            return False
    return head_size is None or head_size == stored_size


def origin_form(parts: SplitResult) -> str:
    """A URL's path and query as a request target (RFC 9112 §3.2.1)."""
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def invalidated(method: str, status: int, target: str, headers: Fields, authorities: Iterable[str]) -> list[str]:
    """The request targets whose stored responses an unsafe request invalidates
    (§4.4): its own, and those of Location and Content-Location when they are on
    the same origin, after a non-error (2xx or 3xx) response."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    headers = list(headers)
    allowed = {authority.lower() for authority in authorities}
    targets = [target]
    for name in ("location", "content-location"):
        value = first_value(headers, name)
        same_origin = _same_origin_target(target, value, allowed) if value else None
        if same_origin is not None:
            targets.append(same_origin)
    return list(dict.fromkeys(targets))


def reusable_post(status: int, target: str, headers: Fields, authorities: Iterable[str]) -> bool:
    """May a response to POST be stored to answer later GETs of its target? Only a
    200 with explicit freshness and a Content-Location naming the POST's own target
    (RFC 9110 §9.3.3; RFC 9111 §3 lets a cache store what it understands). The
    other rules of storing (§3) still apply, to it as to a GET's answer."""
    headers = list(headers)
    location = first_value(headers, "content-location")
    if status != 200 or location is None:
        return False
    if _same_origin_target(target, location, {authority.lower() for authority in authorities}) != target:
        return False
    directives, targeted = response_directives(headers)
    lifetime, heuristic = freshness_lifetime(status, headers, directives, use_expires=not targeted)
    return lifetime > 0 and not heuristic


def _same_origin_target(target: str, reference: str, allowed: set[str]) -> str | None:
    """The request target `reference` names, resolved against `target`, when it is
    on this origin; None otherwise, and for a URL that cannot be parsed."""
    try:
        resolved = urlsplit(urljoin("http://origin.invalid" + target, reference.strip()))
    except ValueError:  # e.g. an unclosed "[" in the authority
        return None
    if resolved.netloc == "origin.invalid" or (resolved.scheme == "http" and resolved.netloc.lower() in allowed):
        return origin_form(resolved)
    return None
