"""The secondary cache key that Vary names (RFC 9111 §4.1).

Owns which request fields a response varies on, and how their values are
normalised so that requests the origin would answer alike share a stored
variant: whitespace and how a list is split over lines never matter, and for
the weighted Accept-* fields neither do case, how a weight is written, nor the
order of members of different weights. Pure: no I/O.
"""

from __future__ import annotations

import re

from .policy import ASCII_LOWER, Fields, RequestHeaders, field_values, list_members

# Members are case-insensitive values with weights (RFC 9110 §12.4.2, §12.5.2-§12.5.4).
WEIGHTED_FIELDS = frozenset({"accept-language", "accept-encoding", "accept-charset"})
_WEIGHT = re.compile(r"[ \t]*;[ \t]*[qQ]=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)[ \t]*")


def vary_names(headers: Fields) -> tuple[str, ...]:
    """The request fields a response varies on (§4.1), lower-cased and sorted;
    ("*",) when it varies on something outside the request."""
    members = list_members(field_values(headers, "vary"))
    if "*" in members:
        return ("*",)
    return tuple(sorted({m.lower() for m in members}))


def secondary_key(names: tuple[str, ...], request: RequestHeaders) -> str:
    """The values of the named request fields, normalised so that requests that
    differ only in whitespace or in how a list is split over lines match (§4.1),
    and, for the WEIGHTED_FIELDS, in case, in how a weight is written and in the
    order of members of different weights; an absent field differs from an empty
    one."""
    parts = []
    for name in names:
        if name not in request:
            parts.append(f"{name}\x01")
        else:
            members = list_members(request.get_all(name))
            parts.append(f"{name}={','.join(_by_weight(members) if name in WEIGHTED_FIELDS else members)}")
    return "\x00".join(parts)


def _by_weight(members: list[str]) -> list[str]:
    """`en-US, fr;q=0.50` and `fr;Q=0.5, en-us` alike: lower-cased, the weight
    written shortest (q=1 left out), highest weight first; members of equal weight
    keep their order, which a server may break ties by (RFC 9110 §12.4.2)."""
    weighted = []
    for member in members:
        value, _, rest = member.partition(";")
        match = _WEIGHT.fullmatch(";" + rest) if rest else None
        q = (match.group(1).rstrip("0").rstrip(".") or "0") if match else "1"
        text = (value.strip() if match or not rest else member).translate(ASCII_LOWER)
        weighted.append((-float(q), text if q == "1" else f"{text};q={q}"))
    return [text for _, text in sorted(weighted, key=lambda pair: pair[0])]
