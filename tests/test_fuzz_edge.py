"""Fuzzing what the edge does with header values, on both sides.

(a) Every pure function the edge applies to a field value (policy, validators,
ranges, represent on a stored 200) gets structure-aware random fields: directives
in any case with huge, negative, fractional, NaN-like, quoted and empty
arguments; dates in the three forms of RFC 9110 §5.6.7 in any case, out of range
or garbled; entity-tags well and badly formed; Range sets with thousands of
digits; weighted Accept-* lists; URLs that do not parse; latin-1 noise; repeated
fields. Each must return what its contract says and raise nothing else.

(b) One edge runs in this process (a background trio loop, with the scripted
origin of scriptorigin.py) and takes random request fields (conditionals,
Range, Cache-Control, Pragma, Accept-*, a Vary-selected field) while the origin
answers with random ETag, Last-Modified, Date, Expires, Age, Cache-Control,
CDN-Cache-Control, Vary, Content-Location, Location and Content-Range (so that
206 answers meet the pieces the edge keeps). The edge never answers
5xx unless the origin did (or `only-if-cached` found nothing, RFC 9111 §5.2.1.7),
every answer parses as HTTP/1.1 with its framing intact, and it logs no error.

Example counts follow fuzzkit's profile ("ci" in the suite, "nightly" with
CHORDCDN_FUZZ_PROFILE=nightly); (b) runs a bounded share of them.
"""

from __future__ import annotations

import logging
import math
import socket
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import policy, vary
from edge.httpserver import Headers, Request
from edge.proxy import EdgeConfig
from edge.pieces import parse_content_range
from edge.ranges import ByteRange, RangeNotSatisfiable, parse_range
from edge.represent import BytesBody, represent
from edge.validators import ETag, evaluate_preconditions, format_http_date, if_range_allows, parse_etag_list, parse_http_date
from tools.edgerun import run_edge

from .fuzzkit import HUGE_INTEGERS  # importing fuzzkit also loads the Hypothesis profile
from .scriptorigin import ScriptOrigin, running_in_thread

NOW = 1_800_000_000.0
YEAR_1, YEAR_9999_END = -62135596800, 253402300799
E2E_EXAMPLES = 60 if settings().max_examples <= 100 else settings().max_examples // 10  # about 2 s per 60

# -- field values ---------------------------------------------------------------------------------

LATIN1 = st.text(st.characters(max_codepoint=0xFF), max_size=40)
WIRE_CHAR = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
WIRE_TEXT = st.text(WIRE_CHAR, max_size=40).map(lambda text: text.strip(" "))  # a valid field value (RFC 9110 §5.5)
ANY_TEXT = st.one_of(LATIN1, st.text(max_size=20))
CASES = st.sampled_from([str.lower, str.upper, str.swapcase, str.title, str])

NUMBERS = st.one_of(
    HUGE_INTEGERS.map(str),
    st.sampled_from(["0", "-1", "-0", "+5", "1.5", "1e9", "NaN", "nan", "inf", "-inf", "0x10", "\u00b2", "2147483648", " 5", ""]),
    st.integers(min_value=11, max_value=6000).map(lambda n: "9" * n),
    st.integers(min_value=11, max_value=6000).map(lambda n: "0" * n + "7"),
)
QUOTED = st.one_of(
    st.text(WIRE_CHAR, max_size=12).map(lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(['"', '"unterminated', '"a\\', '"a,b"', '""', '"\\""']),
)
DIRECTIVES = [
    "max-age", "s-maxage", "no-cache", "no-store", "private", "public", "must-revalidate", "proxy-revalidate",
    "must-understand", "immutable", "stale-while-revalidate", "stale-if-error", "min-fresh", "max-stale", "only-if-cached",
]
TOKENS = st.text(st.sampled_from("abcXYZ-_!#*.09"), min_size=1, max_size=8)
SF_ODDITIES = st.sampled_from(["a=?1", "a=:AAA=:", "a=@5", "a=@99999999999999", "a=(1 2)", 'a=%"x%ff"', "a=1.5", "max-age=1;x=2", "A=1"])


@st.composite
def directive(draw: st.DrawFn) -> str:
    name = draw(st.one_of(st.sampled_from(DIRECTIVES).flatmap(lambda n: CASES.map(lambda case: case(n))), TOKENS, WIRE_TEXT))
    if draw(st.booleans()):
        return name
    argument = draw(st.one_of(NUMBERS, QUOTED, TOKENS, WIRE_TEXT))
    return name + draw(st.sampled_from(["=", " =", "= ", "=="])) + argument


def joined(members: st.SearchStrategy[str], max_size: int = 6) -> st.SearchStrategy[str]:
    """A list field: members with any separators (empty members included, RFC 9110 §5.6.1)."""
    return st.tuples(st.lists(members, max_size=max_size), st.sampled_from([",", ", ", " , ", ",,", "\t,"])).map(
        lambda pair: pair[1].join(pair[0])
    )


CACHE_CONTROL = st.one_of(joined(directive()), WIRE_TEXT)
CDN_CACHE_CONTROL = st.one_of(joined(st.one_of(directive(), SF_ODDITIES)), WIRE_TEXT)


def _rfc850(moment: datetime) -> str:
    return moment.strftime("%A, %d-%b-") + f"{moment.year % 100:02d}" + moment.strftime(" %H:%M:%S GMT")


def _asctime(moment: datetime) -> str:
    return moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S ") + f"{moment.year:04d}"


DATE_FORMS = {"imf": lambda m: format_http_date(m.timestamp()), "rfc850": _rfc850, "asctime": _asctime}
INSTANTS = st.integers(min_value=YEAR_1, max_value=YEAR_9999_END).map(lambda ts: datetime.fromtimestamp(ts, timezone.utc))
GOOD_DATES = st.tuples(INSTANTS, st.sampled_from(sorted(DATE_FORMS)), CASES)
DATES = st.one_of(
    GOOD_DATES.map(lambda t: t[2](DATE_FORMS[t[1]](t[0]))),
    st.sampled_from([
        "0", "-1", "Sun, 99 Nov 1994 08:49:37 GMT", "Tue, 29 Feb 1900 00:00:00 GMT", "Sat, 31 Dec 2016 23:59:60 GMT",
        "Mon, 01 Jan 0001 00:00:00 GMT", "Sun, 00 Nov 0000 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 UTC",
        "\u017fun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
    ]),
    WIRE_TEXT,
)
OPAQUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters='"\x7f'), max_size=10)
ETAGS = st.one_of(
    OPAQUE.map(lambda tag: f'"{tag}"'),
    OPAQUE.map(lambda tag: f'W/"{tag}"'),
    st.sampled_from(["abcdef", 'w/"abcdef"', 'W\\"abcdef"', 'W"abcdef"', '"', 'W/', '"a"b"', "*", "W/*", '"unterminated']),
    OPAQUE,
    WIRE_TEXT,
)
ETAG_LISTS = st.one_of(st.just("*"), joined(ETAGS, 4), WIRE_TEXT)
POSITIONS = st.one_of(
    st.integers(min_value=0, max_value=400).map(str),
    st.just(""),
    st.integers(min_value=11, max_value=5000).map(lambda n: "9" * n),
    st.sampled_from(["-1", "+1", "1.5", "0x1", "\u0661"]),
)
RANGE_SPECS = st.tuples(POSITIONS, POSITIONS).map("-".join)
RANGES = st.one_of(
    st.tuples(st.sampled_from(["bytes", "BYTES", "Bytes", "items", "", "bytes ", " bytes"]), st.lists(RANGE_SPECS, max_size=40), st.sampled_from([",", ", ", " , ", ",,"])).map(
        lambda t: f"{t[0]}={t[2].join(t[1])}"
    ),
    WIRE_TEXT,
)
WEIGHTS = st.sampled_from(["", ";q=1", ";q=0.5", "; Q=0.500", ";q=1.000", ";q=0", ";q=1.5", ";q=abc", ";q=", ";q=NaN", ";level=1"])
WEIGHTED = joined(st.tuples(st.sampled_from(["en", "en-US", "EN-us", "fr", "*", "de-CH-1901", "gzip", "br", "identity", "utf-8"]), WEIGHTS).map("".join))
VARY = st.one_of(joined(st.sampled_from(["Accept", "accept-language", "Accept-Encoding", "X-Variant", "*", "Cookie", "", "X-Absent"])), WIRE_TEXT)
AGES = st.one_of(joined(NUMBERS, 3), NUMBERS)
URLS = st.one_of(
    st.sampled_from([
        "/b", "c", "http://[::1", "http://[zz]/x", "//[/", "http://127.0.0.1:1/x", "https://other/y", "http://h:99999/",
        "http://h:port/", "\\\\evil", "/%zz", "?q", "#f", "http://user@h/", "http://[::1]:80/z",
    ]),
    WIRE_TEXT,
)
MEDIA = st.one_of(st.sampled_from(["text/plain", "text/plain; charset=caf\u00e9", "multipart/x; boundary=a", ""]), WIRE_TEXT)

CONTENT_RANGES = st.one_of(
    st.sampled_from(["bytes 0-35/36", "bytes 0-9/36", "bytes 26-35/36", "bytes */36", "bytes 0-35/*", "BYTES 0-35/36", "bytes 0-99/10"]),
    st.tuples(POSITIONS, POSITIONS, POSITIONS).map(lambda t: f"bytes {t[0]}-{t[1]}/{t[2]}"),
)  # the scripted body is the 36-character case id

RESPONSE_FIELDS: dict[str, st.SearchStrategy[str]] = {
    "Cache-Control": CACHE_CONTROL, "CDN-Cache-Control": CDN_CACHE_CONTROL, "Expires": DATES, "Date": DATES,
    "Last-Modified": DATES, "ETag": ETAGS, "Age": AGES, "Vary": VARY, "Location": URLS, "Content-Location": URLS,
    "Content-Type": MEDIA, "Pragma": st.sampled_from(["no-cache", "x"]), "Content-Range": CONTENT_RANGES,
}
REQUEST_FIELDS: dict[str, st.SearchStrategy[str]] = {
    "Cache-Control": CACHE_CONTROL, "Pragma": st.one_of(joined(st.sampled_from(["no-cache", "No-Cache", "x=1", ""])), WIRE_TEXT),
    "If-None-Match": ETAG_LISTS, "If-Match": ETAG_LISTS, "If-Modified-Since": DATES, "If-Unmodified-Since": DATES,
    "If-Range": st.one_of(ETAGS, DATES), "Range": RANGES, "Accept": st.one_of(st.just("text/html, */*;q=0.1"), WIRE_TEXT),
    "Accept-Language": WEIGHTED, "Accept-Encoding": WEIGHTED, "Accept-Charset": WEIGHTED, "X-Variant": WIRE_TEXT,
}


def fields_of(table: dict[str, st.SearchStrategy[str]], noise: st.SearchStrategy[str], max_size: int = 8) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Field lines with names from `table` in any case, each with its own kind of
    value or with `noise`; names may repeat."""
    line = st.sampled_from(sorted(table)).flatmap(lambda name: st.tuples(CASES.map(lambda case: case(name)), st.one_of(table[name], noise)))
    return st.lists(line, max_size=max_size)


RESPONSE_HEADERS = fields_of(RESPONSE_FIELDS, ANY_TEXT)
REQUEST_HEADERS = fields_of(REQUEST_FIELDS, ANY_TEXT)
STATUSES = st.sampled_from([200, 203, 204, 206, 300, 301, 302, 304, 307, 404, 410, 500, 503, 599, 100])
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "M-SEARCH"])


# -- (a) the pure functions -----------------------------------------------------------------------


def finite_and_not_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


@given(STATUSES, METHODS, RESPONSE_HEADERS, REQUEST_HEADERS, st.booleans(), st.floats(min_value=0, max_value=1e12))
def test_policy_takes_any_fields(status: int, method: str, response: list[tuple[str, str]], request: list[tuple[str, str]],
                                 authorization: bool, elapsed: float) -> None:
    rules = policy.response_rules(status, response)
    assert finite_and_not_negative(rules.lifetime)
    assert finite_and_not_negative(rules.stale_while_revalidate) and finite_and_not_negative(rules.stale_if_error)
    asked = policy.request_rules(Headers(request))
    for bound in (asked.max_age, asked.min_fresh, asked.stale_if_error):
        assert bound is None or finite_and_not_negative(bound)
    assert asked.max_stale is None or asked.max_stale >= 0
    assert isinstance(policy.storable(method, status, asked, response, authorization, rules.lifetime), bool)
    kept = policy.stored_fields(response, NOW)
    assert policy.first_value(kept, "date") is not None
    assert not {name.lower() for name, _ in kept} & policy.NOT_STORED
    age = policy.initial_age(response, NOW - elapsed, NOW)
    assert finite_and_not_negative(age)
    assert policy.reuse(rules, age + elapsed, asked) in policy.Reuse
    assert isinstance(policy.stale_on_error(rules, age, asked, disconnected=authorization), bool)
    assert all(name in ("If-None-Match", "If-Modified-Since") for name, _ in policy.validators_of(response))
    assert isinstance(policy.validator_matches(kept, response), bool)
    policy.updated_fields(kept, response)
    names = vary.vary_names(response)
    assert names == ("*",) or all(name == name.lower() for name in names)
    assert isinstance(vary.secondary_key(names, Headers(request)), str)


@given(METHODS, STATUSES, st.sampled_from(["/t", "/t?x=1", "/a/b/", "/["]), RESPONSE_HEADERS)
def test_invalidated_takes_any_location(method: str, status: int, target: str, response: list[tuple[str, str]]) -> None:
    targets = policy.invalidated(method, status, target, response, ["cdn.example", "[::1]:80"])
    assert targets == [] or (targets[0] == target and all(t.startswith("/") for t in targets))


@given(st.lists(st.one_of(CACHE_CONTROL, CDN_CACHE_CONTROL, ANY_TEXT), max_size=3), st.one_of(NUMBERS, ANY_TEXT))
def test_directive_parsers_take_any_text(values: list[str], argument: str) -> None:
    for directives in (policy.parse_cache_control(values), policy.cdn_cache_control(values) or {}):
        assert all(name == name.lower() for name in directives)
    seconds = policy.delta_seconds(argument)
    assert seconds is None or 0 <= seconds <= policy.DELTA_SECONDS_CAP


@given(GOOD_DATES)
def test_every_form_of_a_date_in_any_case_is_read(good: tuple[datetime, str, Any]) -> None:
    """RFC 9110 §5.6.7's three forms, RFC 9111 §4.2's case-insensitive matching."""
    moment, form, case = good
    parsed = parse_http_date(case(DATE_FORMS[form](moment)))
    assert parsed is not None
    if form == "rfc850":  # a two-digit year names its century by a rule
        parsed_year = datetime.fromtimestamp(parsed, timezone.utc).year
        assert parsed_year % 100 == moment.year % 100 and parsed % 86400 == moment.timestamp() % 86400
    else:
        assert parsed == moment.timestamp()


@given(st.one_of(DATES, ANY_TEXT), st.one_of(st.none(), st.floats(min_value=YEAR_1, max_value=YEAR_9999_END)))
def test_dates_parse_or_are_none(text: str, now: float | None) -> None:
    parsed = parse_http_date(text, now)
    assert parsed is None or YEAR_1 <= parsed <= YEAR_9999_END + 1


@given(st.one_of(ETAG_LISTS, ETAGS, ANY_TEXT))
def test_entity_tags_parse_or_are_skipped(text: str) -> None:
    listed = parse_etag_list(text)
    assert listed == "*" or all(ETag.parse(str(tag)) == tag for tag in listed)
    single = ETag.parse(text)
    assert single is None or ETag.parse(str(single)) == single


DATES_OR_NONE = st.one_of(st.none(), st.floats(min_value=0, max_value=YEAR_9999_END), st.integers(min_value=YEAR_1, max_value=YEAR_9999_END))


@given(METHODS, REQUEST_HEADERS, st.one_of(st.none(), ETAGS), DATES_OR_NONE, DATES_OR_NONE, st.booleans())
def test_preconditions_take_any_fields(method: str, request: list[tuple[str, str]], etag: str | None, last_modified: float | None,
                                       date: float | None, exists: bool) -> None:
    headers = Headers(request)
    assert evaluate_preconditions(method, headers, etag, last_modified, exists=exists, date=date) in (None, 304, 412)
    assert isinstance(if_range_allows(headers.get("if-range"), etag, last_modified, date), bool)


@given(st.one_of(CONTENT_RANGES, ANY_TEXT))
def test_content_range_parses_to_a_placeable_piece_or_none(text: str) -> None:
    parsed = parse_content_range(text)
    assert parsed is None or 0 <= parsed.first <= parsed.last < parsed.complete


@given(st.one_of(RANGES, ANY_TEXT), st.integers(min_value=0, max_value=2**70), st.integers(min_value=1, max_value=40))
def test_range_parses_to_ranges_inside_the_representation(header: str, size: int, most: int) -> None:
    try:
        ranges = parse_range(header, size, most)
    except RangeNotSatisfiable as exc:
        assert exc.content_range == f"bytes */{size}"
        return
    assert ranges is None or (0 < len(ranges) <= most and all(isinstance(r, ByteRange) and r.end < size for r in ranges))


async def _drain(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return b"".join([chunk async for chunk in body])


@given(st.sampled_from(["GET", "HEAD"]), REQUEST_HEADERS, RESPONSE_HEADERS, st.binary(max_size=300))
async def test_represent_answers_any_request_from_a_stored_200(method: str, request: list[tuple[str, str]],
                                                              stored: list[tuple[str, str]], data: bytes) -> None:
    response = represent(Request(method, "/x", Headers(request)), policy.stored_fields(stored, NOW), BytesBody(data))
    assert response.status in (200, 206, 304, 412, 416)
    body = await _drain(response.body)
    length = response.header("content-length")
    if response.status == 304 or (method == "HEAD" and response.status in (200, 206)):
        assert body == b""  # (the server drops any HEAD body, error texts included)
    elif response.status in (200, 206):
        assert length is not None and int(length) == len(body)
    if response.status == 200 and method == "GET":
        assert body == data


# -- (b) the edge, end to end ---------------------------------------------------------------------

LOG_LEVEL = logging.ERROR


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(LOG_LEVEL)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _serve_stack(*, task_status: trio.TaskStatus[tuple[ScriptOrigin, int]] = trio.TASK_STATUS_IGNORED) -> None:
    origin = ScriptOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        edge = await nursery.start(run_edge, EdgeConfig(name="fuzz", origin=origin.base_url, upstream_timeout=10), "127.0.0.1", 0)
        task_status.started((origin, edge.port))


@pytest.fixture(scope="module")
def fuzzed_edge() -> Iterator[tuple[ScriptOrigin, int, _Errors]]:
    """The scripted origin and an edge before it, on a background trio loop."""
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    try:
        with running_in_thread(_serve_stack) as (origin, port):
            yield origin, port, errors
    finally:
        logging.getLogger().removeHandler(errors)


def exchange(port: int, method: str, target: str, fields: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, written byte for byte; the answer read by
    h11, which checks its framing: (status, fields, body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: edge.test", *(f"{name}: {value}" for name, value in fields), "Connection: close"]
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=target, headers=[("Host", "edge.test")]))
    client.send(h11.EndOfMessage())
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, headers, body = 0, {}, b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, headers, body


def origin_step(status: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
    return {"status": status, "headers": [list(pair) for pair in headers]}


def on_the_wire(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The lines as latin-1 can carry them (what is beyond it becomes "?")."""
    return [(name, value.encode("latin-1", "replace").decode("latin-1")) for name, value in fields]


WIRE_REQUEST_HEADERS = fields_of(REQUEST_FIELDS, WIRE_TEXT, max_size=6).map(on_the_wire)
# Half the answers are fresh for an hour, so that later requests meet a stored response.
FRESH_PREFIX = st.one_of(st.just([]), st.just([("Cache-Control", "max-age=3600")]), ETAGS.map(lambda tag: [("Cache-Control", "max-age=3600"), ("ETag", tag)]))
WIRE_RESPONSE_HEADERS = st.tuples(FRESH_PREFIX, fields_of(RESPONSE_FIELDS, WIRE_TEXT, max_size=6)).map(lambda t: on_the_wire(t[0] + t[1]))
EDGE_STATUSES = st.sampled_from([200, 200, 200, 203, 204, 206, 301, 304, 404, 410, 500, 503])
REQUESTS = st.lists(st.tuples(st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE"]), WIRE_REQUEST_HEADERS), min_size=1, max_size=3)


@settings(max_examples=E2E_EXAMPLES)
@given(st.lists(st.tuples(EDGE_STATUSES, WIRE_RESPONSE_HEADERS), min_size=3, max_size=3), REQUESTS)
def test_the_edge_makes_no_5xx_of_its_own(fuzzed_edge: tuple[ScriptOrigin, int, _Errors], answers: list[tuple[int, list[tuple[str, str]]]],
                                          requests: list[tuple[str, list[tuple[str, str]]]]) -> None:
    origin, port, errors = fuzzed_edge
    case_id = str(uuid.uuid4())
    steps = [origin_step(status, headers) for status, headers in answers]
    origin.script(case_id, steps)
    errors.records.clear()
    for number, (method, fields) in enumerate([("GET", []), *requests], 1):
        status, _, _ = exchange(port, method, f"/test/{case_id}", [("Req-Num", str(min(number, 3))), *fields])
        only_if_cached = status == 504 and "only-if-cached" in str(fields).lower()
        origin_sent = {record.get("response_status") for record in origin.state(case_id)}  # a stored 5xx counts too
        assert status < 500 or only_if_cached or status in origin_sent, (
            f"the edge answered {status} to {method} {fields}; the origin had {steps}"
        )
    assert not errors.records, f"the edge logged: {[errors.format(record) for record in errors.records]}"


@pytest.mark.parametrize("etag", ["abcdef", 'w/"abcdef"', 'W\\"abcdef"', 'W"abcdef"'])
def test_a_malformed_stored_etag_gives_200_or_304_never_500(fuzzed_edge: tuple[ScriptOrigin, int, _Errors], etag: str) -> None:
    """RFC 9110 §8.8.3 and §13.1.2 through the edge: a stored response whose ETag is
    not an entity-tag matches no If-None-Match tag (200, from the cache), and "*"
    matches any current representation (304)."""
    origin, port, errors = fuzzed_edge
    case_id = str(uuid.uuid4())
    origin.script(case_id, [origin_step(200, [("Cache-Control", "max-age=3600"), ("ETag", etag)])] * 3)
    path = f"/test/{case_id}"
    first = exchange(port, "GET", path, [("Req-Num", "1")])
    assert first[0] == 200 and first[1].get("etag") == etag
    for listed in ('"abcdef"', 'W/"abcdef"', etag):
        status, headers, body = exchange(port, "GET", path, [("Req-Num", "2"), ("If-None-Match", listed)])
        assert (status, body) == (200, case_id.encode()) and headers.get("server-request-count") == "1"
    status, headers, body = exchange(port, "GET", path, [("Req-Num", "2"), ("If-None-Match", "*")])
    assert (status, body) == (304, b"") and headers.get("etag") == etag
    assert not errors.records
