"""Unit tests for edge.validators: HTTP-date (RFC 9110 §5.6.7), entity-tags (§8.8.3),
conditional requests (§13.1, §13.2.2) and If-Range (§13.1.5).

Pure logic, no I/O, no clock. Each test names the RFC section it checks.
"""

from __future__ import annotations

import pytest

from edge.validators import (
    ETag,
    evaluate_preconditions,
    format_http_date,
    if_range_allows,
    parse_etag_list,
    parse_http_date,
    strong_match,
    weak_match,
)

T = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT, the RFC's own example
T_TEXT = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"


# -- HTTP-date (§5.6.7) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "ts,text",
    [
        (T, T_TEXT),
        (T + 0.999, T_TEXT),  # fractions are dropped, never rounded up
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (951782400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1700000000, "Tue, 14 Nov 2023 22:13:20 GMT"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
        (253402300799, "Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
)
def test_format_imf_fixdate_rfc9110_5_6_7(ts: float, text: str) -> None:
    assert format_http_date(ts) == text


@pytest.mark.parametrize("ts,error", [(253402300800, ValueError), (float("nan"), ValueError), ("1", TypeError)])
def test_format_rejects_nonsense_rfc9110_5_6_7(ts: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        format_http_date(ts)  # type: ignore[arg-type]


def test_format_names_a_huge_integer_by_its_size() -> None:
    """A 5000-digit int cannot even be repr()'d (Python's 4300-digit limit): the
    error must still be the ValueError of §5.6.7's range, with a printable message."""
    with pytest.raises(ValueError, match="16610-bit integer is outside years 1-9999"):
        format_http_date(10**5000)


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # ANSI C asctime()
        "Sun Nov 06 08:49:37 1994",  # asctime with a 2DIGIT day
        "  Sun, 06 Nov 1994 08:49:37 GMT\t",  # surrounding OWS
    ],
)
def test_parse_all_three_formats_rfc9110_5_6_7(text: str) -> None:
    assert parse_http_date(text) == float(T)


def test_parse_round_trips_format_rfc9110_5_6_7() -> None:
    for ts in (0, T, 951782400, 1700000000, 4102444800):
        assert parse_http_date(format_http_date(ts)) == ts


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "yesterday",
        "Sun, 99 Nov 1994 08:49:37 GMT",  # no 99th
        "Tue, 29 Feb 1900 00:00:00 GMT",  # 1900 was not a leap year
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:37 UTC",  # only GMT
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "\u017fun, 06 Nov 1994 08:49:37 GMT",  # long s: only ASCII letters fold
        "Sun, 06 \u212aov 1994 08:49:37 GMT",  # nor does the Kelvin sign
        "Sun, 6 Nov 1994 08:49:37 GMT",  # IMF day is 2DIGIT
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",  # a list of dates
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",  # year zero does not exist
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # non-ASCII digits
        "784111777",
        "1994-11-06T08:49:37Z",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
    ],
)
def test_garbage_dates_are_none_rfc9110_5_6_7(text: str | None) -> None:
    assert parse_http_date(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "sun, 06 nov 1994 08:49:37 gmt",
        "SUN, 06 NOV 1994 08:49:37 GMT",
        "sUn, 06 nOv 1994 08:49:37 Gmt",
        "SUNDAY, 06-NOV-94 08:49:37 GMT",  # obsolete RFC 850, wrong case
        "sunday, 06-nov-94 08:49:37 gmt",
        "SUN NOV  6 08:49:37 1994",  # asctime, wrong case
    ],
)
def test_wrong_case_dates_are_accepted_rfc9111_4_2_rfc9110_5_6_7(text: str) -> None:
    """RFC 9111 §4.2: "Although all date formats are specified to be case-sensitive,
    a cache recipient SHOULD match the field value case-insensitively"; RFC 9110
    §5.6.7 asks recipients to be robust and to accept the obsolete forms."""
    assert parse_http_date(text) == float(T)


def test_leap_second_is_accepted_rfc9110_5_6_7() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == 1483228800.0


def test_day_name_is_not_cross_checked_rfc9110_5_6_7() -> None:
    # Robust parsing: a wrong weekday does not change the instant named.
    assert parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT") == float(T)


def test_rfc850_two_digit_year_resolution_rfc9110_5_6_7() -> None:
    now_2025 = 1735689600.0  # 2025-01-01
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
    assert parse_http_date("Saturday, 01-Jan-00 00:00:00 GMT") == 946684800.0
    # "more than 50 years in the future" means the previous century (§5.6.7)
    assert parse_http_date("Thursday, 01-Jan-76 00:00:00 GMT", now=now_2025) == 189302400.0
    assert parse_http_date("Tuesday, 01-Jan-75 00:00:00 GMT", now=now_2025) == 3313526400.0


def test_parse_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT")  # type: ignore[arg-type]


# -- entity-tags (§8.8.3) --------------------------------------------------------------


def test_etag_list_skips_malformed_members_rfc9110_8_8_3() -> None:
    assert parse_etag_list('W/"a", "b" , garbage, "c"') == [ETag("a", True), ETag("b"), ETag("c")]


@pytest.mark.parametrize(
    "value,expected",
    [
        ("*", "*"),
        ("  *  ", "*"),
        ('"xyzzy"', [ETag("xyzzy")]),
        ('"xyzzy", "r2d2xxxx", "c3piozzzz"', [ETag("xyzzy"), ETag("r2d2xxxx"), ETag("c3piozzzz")]),
        ('W/"xyzzy", W/"r2d2xxxx"', [ETag("xyzzy", True), ETag("r2d2xxxx", True)]),
        ('""', [ETag("")]),  # empty opaque-tag is valid
        ('"a,b"', [ETag("a,b")]),  # comma is an etagc
        ('w/"a", "b"', [ETag("b")]),  # the weak indicator is case-sensitive
        ('"a" "b", "c"', [ETag("c")]),  # missing comma spoils that member only
        ('"has space", "d"', [ETag("d")]),
        ('"unterminated, "e"', [ETag("e")]),
        ('*, "f"', [ETag("f")]),  # "*" only counts alone
        ("", []),
        (" , ,, ", []),
        ("garbage", []),
    ],
)
def test_parse_etag_list_rfc9110_8_8_3(value: str, expected: object) -> None:
    assert parse_etag_list(value) == expected


def test_etag_wire_form_rfc9110_8_8_3() -> None:
    assert str(ETag("abc")) == '"abc"'
    assert str(ETag("abc", weak=True)) == 'W/"abc"'
    assert ETag.parse('W/"abc"') == ETag("abc", True)
    assert ETag.parse("abc") is None
    with pytest.raises(ValueError):
        ETag('a"b')


@pytest.mark.parametrize(
    "a,b,strong,weak",
    [  # the comparison table of §8.8.3.2
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', 'W/"2"', False, False),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"1"', True, True),
    ],
)
def test_comparison_table_rfc9110_8_8_3_2(a: str, b: str, strong: bool, weak: bool) -> None:
    ea, eb = ETag.parse(a), ETag.parse(b)
    assert ea is not None and eb is not None
    assert strong_match(ea, eb) is strong and strong_match(eb, ea) is strong
    assert weak_match(ea, eb) is weak and weak_match(eb, ea) is weak


# -- preconditions (§13.1, §13.2.2) ---------------------------------------------------


def pre(method: str = "GET", etag: str | None = '"v1"', lm: float | None = T, **headers: str) -> int | None:
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    return evaluate_preconditions(method, fields, etag, lm)


def test_no_conditionals_proceed_rfc9110_13_2_2() -> None:
    assert pre() is None
    assert pre("PUT", etag=None, lm=None) is None


@pytest.mark.parametrize(
    "value,etag,expected",
    [
        ('"v1"', '"v1"', None),
        ('"v0", "v1"', '"v1"', None),
        ('"v2"', '"v1"', 412),
        ('W/"v1"', '"v1"', 412),  # If-Match uses strong comparison
        ('"v1"', 'W/"v1"', 412),
        ("*", '"v1"', None),
        ("*", None, None),  # a representation exists even without an etag
        ('"v1"', None, 412),
        ("garbage", '"v1"', 412),  # nothing parseable can match
    ],
)
def test_if_match_rfc9110_13_1_1(value: str, etag: str | None, expected: int | None) -> None:
    assert pre("PUT", etag=etag, If_Match=value) == expected
    assert pre("GET", etag=etag, If_Match=value) == expected


def test_if_match_star_fails_without_representation_rfc9110_13_1_1() -> None:
    assert evaluate_preconditions("PUT", {"If-Match": "*"}, None, None, exists=False) == 412


@pytest.mark.parametrize(
    "value,expected",
    [(T_TEXT, None), (LATER, None), (EARLIER, 412), ("yesterday", None), ("", None)],
)
def test_if_unmodified_since_rfc9110_13_1_4(value: str, expected: int | None) -> None:
    assert pre("DELETE", If_Unmodified_Since=value) == expected


def test_if_unmodified_since_ignored_without_last_modified_rfc9110_13_1_4() -> None:
    assert pre("DELETE", lm=None, If_Unmodified_Since=EARLIER) is None


def test_if_match_overrides_if_unmodified_since_rfc9110_13_2_2() -> None:
    assert pre("PUT", If_Match='"v1"', If_Unmodified_Since=EARLIER) is None
    assert pre("PUT", If_Match='"v9"', If_Unmodified_Since=LATER) == 412


@pytest.mark.parametrize(
    "method,value,expected",
    [
        ("GET", '"v1"', 304),
        ("HEAD", '"v1"', 304),
        ("GET", 'W/"v1"', 304),  # If-None-Match uses weak comparison
        ("GET", '"v0", W/"v1"', 304),
        ("GET", '"v2"', None),
        ("GET", "*", 304),
        ("PUT", '"v1"', 412),
        ("PUT", "*", 412),
        ("POST", '"v2"', None),
        ("GET", "garbage", None),
    ],
)
def test_if_none_match_rfc9110_13_1_2(method: str, value: str, expected: int | None) -> None:
    assert pre(method, If_None_Match=value) == expected


def test_if_none_match_weak_current_etag_rfc9110_13_1_2() -> None:
    assert pre(etag='W/"v1"', If_None_Match='"v1"') == 304


def test_if_none_match_star_passes_without_representation_rfc9110_13_1_2() -> None:
    assert evaluate_preconditions("PUT", {"If-None-Match": "*"}, None, None, exists=False) is None


@pytest.mark.parametrize(
    "method,value,lm,expected",
    [
        ("GET", T_TEXT, T, 304),
        ("HEAD", LATER, T, 304),
        ("GET", EARLIER, T, None),
        ("GET", T_TEXT, T + 0.5, 304),  # the wire date has whole seconds
        ("GET", "Sun, 99 Nov 1994 08:49:37 GMT", T, None),  # invalid date ignored
        ("GET", "yesterday", T, None),
        ("GET", f"{T_TEXT}, {T_TEXT}", T, None),  # more than one member: ignored
        ("GET", T_TEXT, None, None),  # no Last-Modified: ignored
        ("POST", T_TEXT, T, None),  # only GET and HEAD
        ("PUT", LATER, T, None),
    ],
)
def test_if_modified_since_rfc9110_13_1_3(method: str, value: str, lm: float | None, expected: int | None) -> None:
    assert pre(method, lm=lm, If_Modified_Since=value) == expected


def test_if_none_match_overrides_if_modified_since_rfc9110_13_1_3() -> None:
    assert pre(If_None_Match='"v2"', If_Modified_Since=LATER) is None
    assert pre(If_None_Match='"v1"', If_Modified_Since=EARLIER) == 304


def test_failed_if_match_wins_over_if_none_match_rfc9110_13_2_2() -> None:
    assert pre("GET", If_Match='"v9"', If_None_Match='"v1"') == 412


@pytest.mark.parametrize("stored", ["abcdef", 'w/"abcdef"', 'W\\"abcdef"', 'W"abcdef"'])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_malformed_stored_etag_never_matches_if_none_match_rfc9110_8_8_3_13_1_2(stored: str, method: str) -> None:
    """RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, so an unquoted
    tag, a lower-case `w/`, a backslash or no slash make no entity-tag; §13.1.2:
    If-None-Match is then false for every listed tag (the 200 is sent), and "*"
    is true for any current representation (304). Never an exception."""
    for listed in ('"abcdef"', 'W/"abcdef"', stored, f'"x", {stored}'):
        assert pre(method, etag=stored, If_None_Match=listed) is None
    assert pre(method, etag=stored, If_None_Match="*") == 304


@pytest.mark.parametrize("stored", ["abcdef", 'w/"abcdef"', 'W\\"abcdef"', 'W"abcdef"'])
def test_malformed_stored_etag_never_matches_if_match_or_if_range_rfc9110_13_1_1_13_1_5(stored: str) -> None:
    """RFC 9110 §13.1.1: If-Match with tags fails (412) when none strongly matches,
    and "*" passes while a representation exists; §13.1.5: If-Range needs a strong
    match, so the whole representation is sent."""
    assert pre("GET", etag=stored, If_Match='"abcdef"') == 412
    assert pre("GET", etag=stored, If_Match="*") is None
    assert if_range_allows('"abcdef"', stored, T) is False


def test_if_modified_since_without_last_modified_uses_date_rfc9111_4_3_2() -> None:
    """RFC 9111 §4.3.2: "If a request contains an If-Modified-Since header field and
    the Last-Modified header field is not present in a stored response, a cache
    SHOULD use the stored response's Date field value" to evaluate it. Only for
    If-Modified-Since: If-Unmodified-Since still needs Last-Modified (§13.1.4)."""
    def ims(method: str, since: str, date: float, last_modified: float | None = None) -> int | None:
        return evaluate_preconditions(method, {"If-Modified-Since": since}, None, last_modified, date=date)

    assert ims("GET", T_TEXT, T) == 304
    assert ims("HEAD", LATER, T + 0.5) == 304
    assert ims("GET", EARLIER, T) is None
    assert ims("GET", T_TEXT, T, last_modified=T + 10) is None  # a Last-Modified wins
    assert evaluate_preconditions("DELETE", {"If-Unmodified-Since": EARLIER}, None, None, date=T) is None


def test_header_lookup_falls_back_to_lower_case_names() -> None:
    assert evaluate_preconditions("GET", {"if-none-match": '"v1"'}, '"v1"', None) == 304


def test_preconditions_reject_nonsense_arguments() -> None:
    with pytest.raises(TypeError, match="wire form"):
        evaluate_preconditions("GET", {}, 5, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        evaluate_preconditions("GET", {}, None, "yesterday")  # type: ignore[arg-type]


# -- If-Range (§13.1.5) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value,etag,lm,expected",
    [
        (None, '"v1"', T, True),  # no If-Range: honour Range
        ('"v1"', '"v1"', T, True),
        ('"v2"', '"v1"', T, False),
        ('W/"v1"', '"v1"', T, False),  # weak tags never match
        ('"v1"', 'W/"v1"', T, False),
        ('"v1"', None, T, False),
        ('"v1', '"v1"', T, False),  # malformed entity-tag
        (T_TEXT, '"v1"', T, True),
        (T_TEXT, None, T + 0.7, True),  # compared to the second
        (LATER, None, T, False),  # must be an exact match, not "later than"
        (EARLIER, None, T, False),
        (T_TEXT, None, None, False),
        ("yesterday", None, T, False),
        ("", '"v1"', T, False),
    ],
)
def test_if_range_rfc9110_13_1_5(value: str | None, etag: str | None, lm: float | None, expected: bool) -> None:
    assert if_range_allows(value, etag, lm) is expected


def test_if_range_date_needs_strong_last_modified_rfc9110_8_8_2_2() -> None:
    assert if_range_allows(T_TEXT, None, T, date_header=T + 1) is True
    assert if_range_allows(T_TEXT, None, T, date_header=T + 0.9) is False  # same second as Date
    assert if_range_allows(T_TEXT, None, T, date_header=T) is False
