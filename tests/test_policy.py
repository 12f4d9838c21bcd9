"""edge.policy against RFC 9111 (shared cache), RFC 5861 and RFC 9213; fixed timestamps, no clock."""

from __future__ import annotations

import math

import pytest

from edge.httpserver import Headers
from edge.policy import (
    NO_REQUEST_RULES, RequestRules, ResponseRules, Reuse, delta_seconds, http_date, initial_age, invalidated, parse_cache_control,
    head_freshens, request_rules, response_rules, reuse, reusable_post, stale_on_error, storable, stored_fields, updated_fields,
    validators_of,
)
from edge.vary import secondary_key, vary_names

NOW = 1_800_000_000.0
Pairs = list[tuple[str, str]]


def fields(*pairs: tuple[str, str], date: float | None = NOW) -> Pairs:
    """Response fields, with a Date of `date` appended unless it is None."""
    return list(pairs) + ([("Date", http_date(date))] if date is not None else [])


def lifetime_of(*pairs: tuple[str, str], status: int = 200) -> tuple[float, bool]:
    return (rules := response_rules(status, fields(*pairs))).lifetime, rules.heuristic


def can_store(
    *pairs: tuple[str, str], status: int = 200, method: str = "GET", request: RequestRules = NO_REQUEST_RULES, authorization: bool = False
) -> bool:
    headers = fields(*pairs)
    return storable(method, status, request, headers, authorization, response_rules(status, headers).lifetime)


LAST_MODIFIED = ("Last-Modified", http_date(NOW - 10_000))  # heuristic would give 1000 s


# -- parse_cache_control (RFC 9111 §5.2, §4.2.1, §1.2.2) ---------------------------------


def test_directive_names_case_insensitive_and_quoted_arguments_unquoted() -> None:
    """RFC 9111 §5.2: names compare case-insensitively; token and quoted-string arguments."""
    assert parse_cache_control(['Max-Age=60, NO-CACHE="Set-Cookie", Public']) == {"max-age": "60", "no-cache": "Set-Cookie", "public": None}


def test_comma_inside_quoted_string_does_not_split() -> None:
    """RFC 9110 §5.6.4 / RFC 9111 §5.2: a quoted-string may contain commas."""
    assert lifetime_of(("Cache-Control", 'extension="max-age=3600", max-age=1')) == (1.0, False)


@pytest.mark.parametrize("values", [["max-age=1, max-age=3600"], ["max-age=1", "max-age=3600"]])
def test_first_duplicate_directive_wins(values: list[str]) -> None:
    """RFC 9111 §4.2.1: with more than one value for a directive, use the first."""
    assert lifetime_of(*[("Cache-Control", v) for v in values]) == (1.0, False)


def test_junk_members_ignored() -> None:
    """RFC 9111 §5.2 grammar (cache-directive = token [...]): non-token names are not directives."""
    assert parse_cache_control(["&&&, =5, foo bar=1, ,, max-age=60"]) == {"max-age": "60"}


@pytest.mark.parametrize("argument", ["abc", "-1", "'3600'", "", "1.5", "0"])
def test_invalid_or_zero_max_age_is_stale_not_heuristic(argument: str) -> None:
    """RFC 9111 §4.2.1: invalid freshness information (non-integer max-age) → stale;
    §4.2.2: an explicit max-age, even invalid or 0, rules out the heuristic."""
    assert lifetime_of(("Cache-Control", f"max-age={argument}"), LAST_MODIFIED) == (0.0, False)


@pytest.mark.parametrize("argument", ["003600", '"3600"'])
def test_max_age_leading_zeros_and_quoted_form(argument: str) -> None:
    """RFC 9111 §1.2.2 (delta-seconds = 1*DIGIT) and §5.2 (recipients accept both forms)."""
    assert lifetime_of(("Cache-Control", f"max-age={argument}")) == (3600.0, False)


def test_huge_delta_seconds_capped() -> None:
    """RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2**31."""
    assert lifetime_of(("Cache-Control", "max-age=99999999999999999999"))[0] == 2**31


@pytest.mark.parametrize(("text", "expected"), [("9" * 5000, 2**31), ("0" * 5000, 0), ("0" * 5000 + "60", 60), ("2147483648", 2**31)])
def test_delta_seconds_of_thousands_of_digits(text: str, expected: int) -> None:
    """RFC 9111 §1.2.2: 1*DIGIT has no length limit, and a value past 2**31 is 2**31;
    Python's int() refuses more than 4300 digits, which must not become an error."""
    assert delta_seconds(text) == expected
    assert initial_age(fields(("Age", text), date=None), NOW, NOW) == float(expected)


def test_escaped_quote_inside_quoted_string() -> None:
    """RFC 9110 §5.6.4: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE, so `\\"`
    does not end the string and the following no-store (RFC 9111 §5.2.2.5) applies."""
    assert "no-store" in parse_cache_control(['ext="\\"", no-store'])
    assert not can_store(("Cache-Control", 'ext="\\"", no-store, max-age=60'))


@pytest.mark.parametrize("field", [("Cache-Control", "max-age=\u00b2"), ("Age", "\u00b2")])
def test_non_ascii_digit_is_invalid_not_a_crash(field: tuple[str, str]) -> None:
    """RFC 9111 §1.2.2: delta-seconds = 1*DIGIT (RFC 5234: %x30-39 only). Latin-1 '²' is
    invalid: max-age → stale (§4.2.1), Age → ignored (§5.1)."""
    assert lifetime_of(field)[0] == 0.0
    assert initial_age(fields(field), NOW, NOW) == 0.0


# -- freshness (RFC 9111 §4.2.1, §4.2.2, §5.2.2) ------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [("s-maxage=10, max-age=20", 10.0), ("max-age=20, s-maxage=10", 10.0), ("max-age=20", 20.0), (None, 30.0)],
)
def test_freshness_precedence(cache_control: str | None, expected: float) -> None:
    """RFC 9111 §4.2.1: s-maxage (shared cache), then max-age, then Expires − Date."""
    pairs = [("Expires", http_date(NOW + 30))] + ([("Cache-Control", cache_control)] if cache_control else [])
    assert lifetime_of(*pairs) == (expected, False)


@pytest.mark.parametrize(
    "expires",
    [
        [http_date(NOW - 60)],
        ["0"],
        ["Fri, 15 Jan 2027 09:00:00 UTC"],
        ["Fri, 15 Jan 27 09:00:00 GMT"],
        [http_date(NOW + 60), http_date(NOW + 120)],
    ],
    ids=["past", "zero", "utc", "two-digit-year", "two-lines"],
)
def test_bad_or_past_expires_is_stale_and_not_heuristic(expires: list[str]) -> None:
    """RFC 9111 §5.3: invalid Expires (esp. "0") means in the past; §4.2.1: several values →
    may be considered stale; §4.2.2: no heuristic when explicit expiration is present."""
    assert lifetime_of(*[("Expires", e) for e in expires], LAST_MODIFIED) == (0.0, False)


@pytest.mark.parametrize(
    "form",
    ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "SUN, 06 NOV 1994 08:49:37 gmt", "sunday, 06-nov-94 08:49:37 GMT"],
    ids=["rfc850", "asctime", "imf-upper-case", "rfc850-lower-case"],
)
def test_obsolete_and_wrong_case_expires_and_date_accepted(form: str) -> None:
    """RFC 9110 §5.6.7: recipients accept the obsolete rfc850-date and asctime-date
    forms; RFC 9111 §4.2: a cache matches dates case-insensitively. An Expires
    (and a Date) in any of them gives Expires − Date (§4.2.1)."""
    t = 784111777.0  # the RFC's example instant
    expires = ("Expires", http_date(t + 600))
    assert response_rules(200, [("Date", form), expires]).lifetime == 600.0
    assert response_rules(200, [("Date", http_date(t - 60)), ("Expires", form)]).lifetime == 60.0
    assert initial_age([("Date", form)], t + 5, t + 5) == 5.0


def test_expires_measured_against_date_not_clock() -> None:
    """RFC 9111 §4.2.1: freshness_lifetime = Expires − Date."""
    headers = [("Date", http_date(NOW - 1000)), ("Expires", http_date(NOW + 500))]
    assert response_rules(200, headers).lifetime == 1500.0


@pytest.mark.parametrize("status", [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501])
def test_heuristic_for_heuristically_cacheable_statuses(status: int) -> None:
    """RFC 9111 §4.2.2 / RFC 9110 §15.1: 10% of Date − Last-Modified for these statuses."""
    assert lifetime_of(LAST_MODIFIED, status=status) == (1000.0, True)


@pytest.mark.parametrize("status", [201, 302, 403, 500, 502, 599])
def test_no_heuristic_for_other_statuses_unless_public(status: int) -> None:
    """RFC 9111 §4.2.2: heuristics only for heuristically cacheable statuses or `public`."""
    assert lifetime_of(LAST_MODIFIED, status=status) == (0.0, False)
    assert lifetime_of(LAST_MODIFIED, ("Cache-Control", "public"), status=status) == (1000.0, True)


@pytest.mark.parametrize(
    ("cache_control", "must_revalidate", "no_cache"),
    [
        ("max-age=60", False, False),
        ("max-age=60, must-revalidate", True, False),  # §5.2.2.2
        ("max-age=60, proxy-revalidate", True, False),  # §5.2.2.8
        ("s-maxage=60", True, False),  # §5.2.2.10
        ("max-age=60, no-cache", False, True),  # §5.2.2.4
        ('max-age=60, no-cache="Set-Cookie"', False, False),  # qualified: not unqualified
    ],
)
def test_response_flags(cache_control: str, must_revalidate: bool, no_cache: bool) -> None:
    """RFC 9111 §5.2.2.2, .4, .8, .10: revalidation flags of a response."""
    rules = response_rules(200, fields(("Cache-Control", cache_control)))
    assert (rules.must_revalidate, rules.no_cache) == (must_revalidate, no_cache)


def test_stale_extension_windows() -> None:
    """RFC 5861 §3, §4: stale-while-revalidate and stale-if-error delta-seconds."""
    rules = response_rules(200, fields(("Cache-Control", "max-age=1, stale-while-revalidate=30, stale-if-error=300")))
    assert (rules.stale_while_revalidate, rules.stale_if_error) == (30.0, 300.0)


# -- CDN-Cache-Control (RFC 9213 §2.1, §2.2) ---------------------------------------------


def test_cdn_cache_control_replaces_cache_control_and_expires() -> None:
    """RFC 9213 §2.2: a valid targeted field is followed and Cache-Control/Expires ignored."""
    assert can_store(("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=10000"))
    assert lifetime_of(("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=10000")) == (10000.0, False)
    past = ("Expires", http_date(NOW - 10_000))
    assert lifetime_of(("Cache-Control", "max-age=1"), past, ("CDN-Cache-Control", "max-age=3600"))[0] == 3600.0
    # Even a field with no registered directive replaces them (RFC 9213 §3.1's `none`).
    assert lifetime_of(("Cache-Control", "max-age=60"), ("Expires", http_date(NOW + 60)), ("CDN-Cache-Control", "none")) == (0.0, False)


@pytest.mark.parametrize("cdn", ["max-age=10000, &&&&&", "max-age =100", ""])
def test_invalid_or_empty_cdn_cache_control_ignored(cdn: str) -> None:
    """RFC 9213 §2.1: an empty field or a Structured Fields parse error → ignore the field."""
    assert not can_store(("CDN-Cache-Control", cdn), ("Cache-Control", "no-store"))
    assert lifetime_of(("CDN-Cache-Control", cdn), ("Cache-Control", "max-age=1"))[0] == 1.0


def test_cdn_directive_of_wrong_type_dropped() -> None:
    """RFC 9213 §2.1: max-age must be an Integer; a String value is not consumed."""
    assert not can_store(("CDN-Cache-Control", 'max-age="10000"'), ("Cache-Control", "no-store"))
    # The field is still valid, so Cache-Control's max-age is ignored too.
    assert lifetime_of(("CDN-Cache-Control", 'max-age="10000", public'), ("Cache-Control", "max-age=60")) == (0.0, False)


@pytest.mark.parametrize("cdn", ["Max-Age=600", "MAX-AGE=600, Public", 'max-age=600, X-Note="Keep Case"'])
def test_cdn_cache_control_directive_names_case_insensitive(cdn: str) -> None:
    """RFC 9111 §5.2 ("Cache directives are identified by a token, to be compared
    case-insensitively"), which RFC 9213 §2.1 carries over to CDN-Cache-Control:
    `Max-Age` is max-age, though Structured Fields keys are lower-case only."""
    assert lifetime_of(("CDN-Cache-Control", cdn), ("Cache-Control", "no-store")) == (600.0, False)
    assert can_store(("CDN-Cache-Control", cdn), ("Cache-Control", "no-store"))
    assert not can_store(("CDN-Cache-Control", "Max-Age=600, No-Store"), ("Cache-Control", "max-age=60"))


def test_cdn_max_age_zero_beats_future_expires() -> None:
    """RFC 9213 §2.2: Expires is ignored when CDN-Cache-Control applies."""
    assert lifetime_of(("CDN-Cache-Control", "max-age=0"), ("Expires", http_date(NOW + 10_000)))[0] == 0.0


@pytest.mark.parametrize("cdn", ["private", "no-store"])
def test_cdn_private_or_no_store_not_stored(cdn: str) -> None:
    """RFC 9213 §2.2 with RFC 9111 §3: the targeted private / no-store forbid storing."""
    assert not can_store(("CDN-Cache-Control", cdn), ("Cache-Control", "max-age=10000"), ("Expires", http_date(NOW + 10_000)))


# -- age (RFC 9111 §4.2.3, §5.1) ---------------------------------------------------------


def test_initial_age_from_date_delay_and_age() -> None:
    """RFC 9111 §4.2.3: max(apparent_age, age_value + response_delay)."""
    assert initial_age(fields(date=NOW - 100), NOW, NOW) == 100.0
    assert initial_age(fields(("Age", "10")), NOW - 5, NOW) == 15.0
    assert initial_age(fields(("Age", "10"), date=NOW - 100), NOW - 5, NOW) == 100.0


@pytest.mark.parametrize(("lines", "expected"), [(["7200, 0"], 7200.0), (["0, 7200"], 0.0), (["7200", "0"], 7200.0)])
def test_first_age_member_used(lines: list[str], expected: float) -> None:
    """RFC 9111 §5.1: for a list-valued Age, use the first member."""
    assert initial_age(fields(*[("Age", v) for v in lines]), NOW, NOW) == expected


@pytest.mark.parametrize("value", ["abc", "-7200", "7200.0"])
def test_invalid_age_ignored(value: str) -> None:
    """RFC 9111 §5.1: an Age that is not a non-negative integer is ignored."""
    assert initial_age(fields(("Age", value)), NOW, NOW) == 0.0


def test_huge_age_capped_and_stale() -> None:
    """RFC 9111 §1.2.2 and §5.1: a huge Age becomes 2**31; the response is stale."""
    headers = fields(("Age", "99999999999999999999"), ("Cache-Control", "max-age=3600"))
    age = initial_age(headers, NOW, NOW)
    assert age == 2**31
    assert reuse(response_rules(200, headers), age, NO_REQUEST_RULES) is Reuse.VALIDATE


# -- storable (RFC 9111 §3, §3.5, §4.1, §5.2.2.3) ----------------------------------------

MAX_AGE = ("Cache-Control", "max-age=60")
STORABLE_CASES = [
    # (id, pairs, kwargs, expected)
    ("plain-max-age", [MAX_AGE], {}, True),
    ("no-store-any-case", [("Cache-Control", "max-age=60, No-Store")], {}, False),  # §5.2.2.5
    ("private", [("Cache-Control", "max-age=60, private")], {}, False),  # §5.2.2.7
    ("private-qualified", [("Cache-Control", 'max-age=60, private="X"')], {}, True),  # §5.2.2.7
    ("request-no-store", [MAX_AGE], {"request": RequestRules(no_store=True)}, False),  # §5.2.1.5
    ("auth-max-age-only", [MAX_AGE], {"authorization": True}, False),  # §3.5
    ("auth-public", [("Cache-Control", "max-age=60, public")], {"authorization": True}, True),
    ("auth-s-maxage", [("Cache-Control", "s-maxage=60")], {"authorization": True}, True),
    ("auth-must-revalidate", [("Cache-Control", "max-age=60, must-revalidate")], {"authorization": True}, True),
    ("206", [MAX_AGE], {"status": 206}, False),
    ("304", [MAX_AGE], {"status": 304}, False),
    ("1xx", [MAX_AGE], {"status": 103}, False),  # §3: final responses only
    ("post", [MAX_AGE], {"method": "POST"}, False),
    ("head", [MAX_AGE], {"method": "HEAD"}, False),
    ("vary-star", [MAX_AGE, ("Vary", "*")], {}, False),  # §4.1
    ("vary-star-member", [MAX_AGE, ("Vary", "Accept, *")], {}, False),
    ("vary-star-line", [MAX_AGE, ("Vary", "Accept"), ("Vary", "*")], {}, False),
    ("vary-accept", [MAX_AGE, ("Vary", "Accept")], {}, True),
    ("must-understand-unknown", [("Cache-Control", "max-age=60, must-understand, no-store")], {"status": 599}, False),
    ("must-understand-200", [("Cache-Control", "max-age=60, must-understand, no-store")], {}, True),  # §5.2.2.3
    ("no-freshness-no-validator", [], {}, False),
    ("expired-with-etag", [("Cache-Control", "max-age=0"), ("ETag", '"v1"')], {}, True),
    ("heuristic-200", [LAST_MODIFIED], {}, True),
    ("599-max-age", [MAX_AGE], {"status": 599}, True),
    ("599-last-modified-only", [LAST_MODIFIED], {"status": 599}, False),
    ("201-last-modified-only", [LAST_MODIFIED], {"status": 201}, False),
    ("599-public", [("Cache-Control", "public"), LAST_MODIFIED], {"status": 599}, True),
]


@pytest.mark.parametrize(("pairs", "kwargs", "expected"), [c[1:] for c in STORABLE_CASES], ids=[c[0] for c in STORABLE_CASES])
def test_storable(pairs: Pairs, kwargs: dict, expected: bool) -> None:
    """RFC 9111 §3, §3.5 (Authorization), §4.1 (Vary: *), §5.2.2.3, §5.2.2.5, §5.2.2.7."""
    assert can_store(*pairs, **kwargs) is expected


# -- stored fields (RFC 9111 §3.1) -------------------------------------------------------


def names(headers: Pairs) -> set[str]:
    return {k.lower() for k, _ in headers}


def test_stored_fields_drop_hop_by_hop_and_connection_named() -> None:
    """RFC 9111 §3.1 / RFC 9110 §7.6.1: hop-by-hop fields and those Connection names are not stored."""
    hop = [("Connection", "close, X-Hop"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("X-Hop", "1"), ("Upgrade", "h2c")]
    headers = fields(*hop, ("X-End", "2"))
    assert names(stored_fields(headers, NOW)) == {"x-end", "date"}


def test_stored_fields_drop_private_and_no_cache_named_fields() -> None:
    """RFC 9111 §5.2.2.7 (shared cache MUST NOT store private="..." fields), §5.2.2.4 (no-cache="...")."""
    headers = fields(("Cache-Control", 'max-age=60, private="A", no-cache="b, C"'), ("A", "1"), ("B", "2"), ("C", "3"), ("D", "4"))
    assert names(stored_fields(headers, NOW)) == {"cache-control", "d", "date"}


def test_stored_fields_recomputed_fields_dropped_and_date_added() -> None:
    """RFC 9111 §3.1/§4.2.3 (Age is recomputed), RFC 9211 (Cache-Status), RFC 9110 §6.6.1 (add Date)."""
    kept = stored_fields([("Content-Length", "5"), ("Age", "3"), ("Cache-Status", "x; hit"), ("ETag", '"v"')], NOW)
    assert kept == [("ETag", '"v"'), ("Date", http_date(NOW))]
    assert stored_fields(fields(date=NOW - 60), NOW) == [("Date", http_date(NOW - 60))]


# -- request directives (RFC 9111 §5.2.1, §5.4) ------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("Cache-Control", "max-age=5")], RequestRules(max_age=5.0)),  # §5.2.1.1
        ([("Cache-Control", "max-stale")], RequestRules(max_stale=math.inf)),  # §5.2.1.2
        ([("Cache-Control", "max-stale=10")], RequestRules(max_stale=10.0)),
        ([("Cache-Control", "min-fresh=30")], RequestRules(min_fresh=30.0)),  # §5.2.1.3
        ([("Cache-Control", "No-Cache")], RequestRules(no_cache=True)),  # §5.2.1.4
        ([("Cache-Control", "no-store")], RequestRules(no_store=True)),  # §5.2.1.5
        ([("Cache-Control", "only-if-cached")], RequestRules(only_if_cached=True)),  # §5.2.1.7
        ([("Cache-Control", "stale-if-error=60")], RequestRules(stale_if_error=60.0)),  # RFC 5861 §4
        ([("Pragma", "no-cache")], RequestRules(no_cache=True)),  # §5.4
        ([("Pragma", "no-cache"), ("Cache-Control", "max-age=5")], RequestRules(max_age=5.0)),  # §5.4
        ([("Cache-Control", "foo=bar, x-unknown")], RequestRules()),  # §5.2.3
        ([], RequestRules()),
    ],
)
def test_request_rules(pairs: Pairs, expected: RequestRules) -> None:
    """RFC 9111 §5.2.1 request directives; §5.4 Pragma only without Cache-Control."""
    assert request_rules(Headers(pairs)) == expected


# -- reuse (RFC 9111 §4.2, §4.2.4, §5.2; RFC 5861 §3) ------------------------------------

R100 = ResponseRules(lifetime=100.0)
R100_SWR = ResponseRules(lifetime=100.0, stale_while_revalidate=60.0)
R100_MR = ResponseRules(lifetime=100.0, must_revalidate=True, stale_while_revalidate=60.0)


@pytest.mark.parametrize(
    ("rules", "age", "request_", "expected"),
    [
        (R100, 50.0, RequestRules(), Reuse.FRESH),  # §4.2: fresh while lifetime > age
        (R100, 100.0, RequestRules(), Reuse.VALIDATE),
        (R100, 150.0, RequestRules(max_stale=60.0), Reuse.STALE_ALLOWED),  # §5.2.1.2
        (R100, 150.0, RequestRules(max_stale=40.0), Reuse.VALIDATE),
        (R100, 1e9, RequestRules(max_stale=math.inf), Reuse.STALE_ALLOWED),
        (R100_MR, 150.0, RequestRules(max_stale=math.inf), Reuse.VALIDATE),  # §5.2.2.2
        (R100_SWR, 120.0, RequestRules(), Reuse.STALE_WHILE_REVALIDATE),  # RFC 5861 §3
        (R100_SWR, 200.0, RequestRules(), Reuse.VALIDATE),
        (R100_MR, 120.0, RequestRules(), Reuse.VALIDATE),  # must-revalidate beats swr
        (R100, 50.0, RequestRules(max_age=30.0), Reuse.VALIDATE),  # §5.2.1.1
        (R100, 50.0, RequestRules(max_age=60.0), Reuse.FRESH),
        (R100, 50.0, RequestRules(min_fresh=60.0), Reuse.VALIDATE),  # §5.2.1.3
        (R100, 50.0, RequestRules(min_fresh=40.0), Reuse.FRESH),
        (R100, 50.0, RequestRules(no_cache=True), Reuse.VALIDATE),  # §5.2.1.4
        (ResponseRules(lifetime=100.0, no_cache=True), 50.0, RequestRules(), Reuse.VALIDATE),  # §5.2.2.4
    ],
)
def test_reuse(rules: ResponseRules, age: float, request_: RequestRules, expected: Reuse) -> None:
    """RFC 9111 §4.2.4 (serving stale), §5.2.1/§5.2.2 directives, RFC 5861 §3."""
    assert reuse(rules, age, request_) is expected


# -- stale on error (RFC 5861 §4, RFC 9111 §4.2.4) ---------------------------------------

R100_SIE = ResponseRules(lifetime=100.0, stale_if_error=300.0)


@pytest.mark.parametrize(
    ("rules", "age", "request_", "disconnected", "expected"),
    [
        (R100_SIE, 350.0, RequestRules(), False, True),  # within the response's window
        (R100_SIE, 450.0, RequestRules(), False, False),
        (R100, 350.0, RequestRules(stale_if_error=300.0), False, True),  # the request's window
        (R100, 150.0, RequestRules(), False, False),
        (R100, 1e9, RequestRules(), True, True),  # §4.2.4: disconnected
        (ResponseRules(lifetime=100.0, must_revalidate=True, stale_if_error=300.0), 150.0, RequestRules(), True, False),
        (ResponseRules(lifetime=100.0, no_cache=True, stale_if_error=300.0), 150.0, RequestRules(), True, False),
    ],
)
def test_stale_on_error(rules: ResponseRules, age: float, request_: RequestRules, disconnected: bool, expected: bool) -> None:
    """RFC 5861 §4 (stale-if-error, either side); RFC 9111 §4.2.4 (disconnected; not against must-revalidate/no-cache)."""
    assert stale_on_error(rules, age, request_, disconnected) is expected


# -- validation (RFC 9111 §4.3.1, §3.2) --------------------------------------------------


def test_validators_copied_verbatim() -> None:
    """RFC 9111 §4.3.1: the stored ETag as If-None-Match, Last-Modified as If-Modified-Since."""
    lm = LAST_MODIFIED[1]
    assert validators_of([("ETag", 'W/"x1"'), ("Last-Modified", lm)]) == [("If-None-Match", 'W/"x1"'), ("If-Modified-Since", lm)]
    assert validators_of([("Cache-Control", "max-age=1")]) == []


def test_updated_fields_from_304() -> None:
    """RFC 9111 §3.2: 304 fields replace stored ones, except Content-Length and hop-by-hop."""
    stored = [("Date", http_date(NOW - 60)), ("ETag", '"v"'), ("Cache-Control", "max-age=60"), ("Content-Length", "10"), ("X-Keep", "1")]
    hop = [("Connection", "close"), ("Keep-Alive", "timeout=5")]
    not_modified = [("Date", http_date(NOW)), ("Cache-Control", "max-age=120"), ("Content-Length", "0"), *hop]
    merged = dict((k.lower(), v) for k, v in updated_fields(stored, not_modified))
    assert merged == {"date": http_date(NOW), "etag": '"v"', "cache-control": "max-age=120", "content-length": "10", "x-keep": "1"}


# -- invalidation (RFC 9111 §4.4) --------------------------------------------------------

AUTHORITIES = ["cdn.example", "cdn.example:8080"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH"])
def test_unsafe_methods_invalidate_target(method: str) -> None:
    """RFC 9111 §4.4: unsafe methods, including ones whose safety is unknown, invalidate."""
    assert invalidated(method, 200, "/a?x=1", [], AUTHORITIES) == ["/a?x=1"]


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/b", ["/a", "/b"]),
        ("c", ["/a", "/c"]),
        ("http://CDN.example/d?q", ["/a", "/d?q"]),
        ("http://cdn.example:8080/e", ["/a", "/e"]),
        ("http://other.example/f", ["/a"]),
        ("//other.example/g", ["/a"]),
    ],
)
def test_location_invalidated_only_on_same_origin(location: str, expected: list[str]) -> None:
    """RFC 9111 §4.4: Location / Content-Location URIs only when they share the origin."""
    assert invalidated("POST", 201, "/a", [("Location", location)], AUTHORITIES) == expected
    assert invalidated("PUT", 204, "/a", [("Content-Location", location)], AUTHORITIES) == expected


@pytest.mark.parametrize("location", ["http://[::1", "http://[zz]/x", "//[/", "http://a\uff03b/"])
def test_unparseable_location_is_not_invalidated(location: str) -> None:
    """RFC 9111 §4.4: only a URI that names the same origin is invalidated; one that
    cannot be parsed names none (and is no reason to fail the response)."""
    assert invalidated("POST", 201, "/a", [("Location", location), ("Content-Location", "/b")], AUTHORITIES) == ["/a", "/b"]


@pytest.mark.parametrize(("method", "status"), [("POST", 404), ("DELETE", 500), ("GET", 200), ("HEAD", 200), ("OPTIONS", 200), ("TRACE", 200)])
def test_no_invalidation_on_errors_or_safe_methods(method: str, status: int) -> None:
    """RFC 9111 §4.4: only a non-error status to an unsafe method invalidates."""
    assert invalidated(method, status, "/a", [("Location", "/b")], AUTHORITIES) == []


# -- Vary (RFC 9111 §4.1) ----------------------------------------------------------------


def test_vary_names() -> None:
    """RFC 9111 §4.1: `*` always fails to match; names are case-insensitive."""
    assert vary_names([("Vary", "Accept, *")]) == ("*",)
    assert vary_names([("Vary", "User-Agent, accept"), ("vary", "Accept-Encoding, ACCEPT")]) == ("accept", "accept-encoding", "user-agent")
    assert vary_names([]) == ()


def test_secondary_key_normalisation() -> None:
    """RFC 9111 §4.1: values match after normalising whitespace and combining field lines;
    an absent field does not match an empty one."""
    names_ = ("accept", "foo")
    one_line = secondary_key(names_, Headers([("Foo", "1, 2"), ("Accept", "text/html")]))
    two_lines = secondary_key(names_, Headers([("foo", " 1 "), ("FOO", "2"), ("accept", "text/html")]))
    assert one_line == two_lines
    assert one_line != secondary_key(names_, Headers([("Foo", "2, 1"), ("Accept", "text/html")]))
    assert secondary_key(("foo",), Headers([])) != secondary_key(("foo",), Headers([("Foo", "")]))


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("en-US, fr;q=0.5", "fr;q=0.5,en-us", True),  # member order across weights, case
        ("en-US, fr;q=0.5", "EN-us , FR ; Q=0.500", True),  # how a weight is written
        ("de;q=1.0, en;q=0", "de, en;q=0.000", True),
        ("en, fr", "fr, en", False),  # equal weights: order may break the tie
        ("en;q=0.5", "en;q=0.6", False),
        ("en", "en-gb", False),
    ],
)
def test_accept_language_normalised_for_vary(one: str, other: str, same: bool) -> None:
    """RFC 9111 §4.1 (a cache MAY normalise the selecting fields' values, e.g. by
    reordering or changing case where the field's semantics allow); RFC 9110
    §12.5.4 (language ranges are case-insensitive) and §12.4.2 (q is
    case-insensitive, weight 1 is the default, members rank by weight)."""
    def key(value: str) -> str:
        return secondary_key(("accept-language",), Headers([("Accept-Language", value)]))

    assert (key(one) == key(other)) is same


# -- §4.3.5: freshening with HEAD -----------------------------------------------------------

STORED_HEAD = [("ETag", '"v1"'), ("Last-Modified", "Mon, 02 Nov 2026 10:00:00 GMT")]


@pytest.mark.parametrize(
    "head, size, freshens",
    [
        ([("ETag", '"v1"')], 10, True),  # the validators it carries match, the length too
        ([], None, True),  # no validators, no length: nothing contradicts the stored one
        ([("ETag", '"v2"')], 10, False),
        ([("ETag", '"v1"'), ("Last-Modified", "Tue, 03 Nov 2026 10:00:00 GMT")], 10, False),
        ([("ETag", '"v1"')], 11, False),  # same tag, but a Content-Length that differs
        ([("ETag", 'W/"v1"')], 10, False),  # a weak tag is another value (§4.3.5 compares values)
    ],
)
def test_a_head_answer_freshens_only_a_matching_stored_response(head: list[tuple[str, str]], size: int | None, freshens: bool) -> None:
    """RFC 9111 §4.3.5: update when each received validator matches and the
    Content-Length, if sent, matches; otherwise the stored response stays stale."""
    assert head_freshens(STORED_HEAD, 10, head, size) is freshens


# -- RFC 9110 §9.3.3: a POST's answer reused for GET ------------------------------------------


@pytest.mark.parametrize(
    "status, fields, reusable",
    [
        (200, [("Cache-Control", "max-age=60"), ("Content-Location", "/p")], True),
        (200, [("Cache-Control", "max-age=60"), ("Content-Location", "http://origin.example/p")], True),
        (200, [("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"), ("Date", "Mon, 02 Nov 2026 10:00:00 GMT"), ("Content-Location", "p")], True),
        (200, [("Cache-Control", "max-age=60")], False),  # no Content-Location
        (200, [("Cache-Control", "max-age=60"), ("Content-Location", "/other")], False),
        (200, [("Cache-Control", "max-age=60"), ("Content-Location", "http://evil.example/p")], False),
        (200, [("Last-Modified", "Mon, 02 Nov 2020 10:00:00 GMT"), ("Content-Location", "/p")], False),  # heuristic only
        (200, [("Cache-Control", "max-age=0"), ("Content-Location", "/p")], False),
        (201, [("Cache-Control", "max-age=60"), ("Content-Location", "/p")], False),
    ],
)
def test_a_post_answer_is_reusable_only_with_explicit_freshness_and_its_own_location(
    status: int, fields: list[tuple[str, str]], reusable: bool
) -> None:
    assert reusable_post(status, "/p", fields, ["origin.example"]) is reusable
