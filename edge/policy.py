"""Cache rules for a shared cache (RFC 9111), as pure functions.

Owns the decisions: which response may be stored, how long it stays fresh, whether
a stale copy may be served, and which header fields are hop-by-hop. No I/O; times
are passed in as seconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from .validators import parse_http_date

# RFC 9110 §7.6.1: fields meaningful only for one connection.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"}
)

Fields = Iterable[tuple[str, str]]


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Directives of one or more Cache-Control field values, names lower-cased
    (RFC 9111 §5.2). Quoted values are unquoted; the first of a repeated directive
    wins; members that are not tokens are ignored."""
    directives: dict[str, str | None] = {}
    for value in values:
        for member in _split_members(value):
            name, sep, argument = member.partition("=")
            name = name.strip().lower()
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                continue
            argument = argument.strip()
            if len(argument) >= 2 and argument[0] == argument[-1] == '"':
                argument = argument[1:-1]
            directives.setdefault(name, argument if sep else None)
    return directives


def _split_members(value: str) -> list[str]:
    """Split on commas outside quoted strings."""
    members, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            members.append("".join(current))
            current = []
        else:
            current.append(char)
    members.append("".join(current))
    return [m for m in members if m.strip()]


def delta_seconds(value: str | None) -> int | None:
    """A delta-seconds argument (RFC 9111 §1.2.2); None when absent or invalid.
    Values too large to represent are capped at 2**31."""
    if value is None or not value.isdigit():
        return None
    return min(int(value), 2**31)


def field_values(headers: Fields, name: str) -> list[str]:
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def first_value(headers: Fields, name: str) -> str | None:
    """The first value of a field, or None."""
    name = name.lower()
    return next((value for key, value in headers if key.lower() == name), None)


def end_to_end(headers: Fields) -> list[tuple[str, str]]:
    """The fields a proxy passes on or stores: without hop-by-hop fields, nor those
    the Connection field names (RFC 9110 §7.6.1)."""
    headers = list(headers)
    named = {token.strip().lower() for value in field_values(headers, "connection") for token in value.split(",")}
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


@dataclass(frozen=True)
class Freshness:
    """What a stored response's own headers say about its reuse."""

    lifetime: float
    must_revalidate: bool
    no_cache: bool


def storable(status: int, request_directives: Mapping[str, str | None], response_directives: Mapping[str, str | None], has_authorization: bool) -> bool:
    """RFC 9111 §3, narrowed to what the edge stores today: complete 200 responses
    that neither side marks no-store, that are not private, and that carry
    explicit freshness (a response with Authorization only with public,
    s-maxage or must-revalidate, §3.5)."""
    if status != 200 or "no-store" in request_directives or "no-store" in response_directives:
        return False
    if "private" in response_directives:
        return False
    if has_authorization and not {"public", "s-maxage", "must-revalidate"} & response_directives.keys():
        return False
    return True


def freshness(headers: Fields) -> Freshness:
    """Freshness lifetime (RFC 9111 §4.2.1): s-maxage, then max-age, then Expires
    minus Date. An Expires that cannot be parsed means already stale."""
    headers = list(headers)
    directives = parse_cache_control(field_values(headers, "cache-control"))
    lifetime: float = 0.0
    shared_max_age = delta_seconds(directives.get("s-maxage"))
    max_age = delta_seconds(directives.get("max-age"))
    if shared_max_age is not None:
        lifetime = shared_max_age
    elif max_age is not None:
        lifetime = max_age
    else:
        expires_values = field_values(headers, "expires")
        if expires_values:
            expires = parse_http_date(expires_values[0])
            date = parse_http_date(next(iter(field_values(headers, "date")), None))
            if expires is not None and date is not None:
                lifetime = max(0.0, expires - date)
    return Freshness(
        lifetime=lifetime,
        must_revalidate=bool({"must-revalidate", "proxy-revalidate", "s-maxage"} & directives.keys()),
        no_cache="no-cache" in directives,
    )
