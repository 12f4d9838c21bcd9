"""Unit tests for edge.ranges: Range parsing (RFC 9110 §14.1-14.2), Content-Range
(§14.4) and multipart/byteranges framing (§14.6), checked byte for byte.

Pure logic, no I/O. Each test names the RFC section it checks.
"""

from __future__ import annotations

import email.parser
import email.policy
import random

import pytest

from edge.ranges import (
    ByteRange,
    MultipartPlan,
    RangeNotSatisfiable,
    coalesce,
    is_field_value,
    new_boundary,
    parse_range,
    plan_multipart,
)

PAYLOAD = bytes(range(256)) * 4  # 1024 distinct-ish bytes


def br(start: int, end: int) -> ByteRange:
    return ByteRange(start, end)


# -- ByteRange and Content-Range (§14.4) ---------------------------------------------


def test_byte_range_length_and_content_range_rfc9110_14_4() -> None:
    r = br(0, 499)
    assert r.length == 500
    assert r.content_range(1234) == "bytes 0-499/1234"
    assert br(7, 7).content_range(8) == "bytes 7-7/8"


def test_content_range_rejects_range_past_the_end_rfc9110_14_4() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        br(0, 10).content_range(10)


@pytest.mark.parametrize("start,end", [(-1, 3), (5, 4)])
def test_byte_range_rejects_nonsense_bounds(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        ByteRange(start, end)


def test_unsatisfiable_carries_416_content_range_rfc9110_14_4() -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range("bytes=2000-", 1000)
    assert info.value.size == 1000
    assert info.value.content_range == "bytes */1000"


# -- the three range forms (§14.1.2) --------------------------------------------------


@pytest.mark.parametrize(
    "header,expected",
    [
        ("bytes=0-499", [br(0, 499)]),  # first 500 bytes
        ("bytes=500-999", [br(500, 999)]),  # second 500 bytes
        ("bytes=-500", [br(9500, 9999)]),  # final 500 bytes, suffix form
        ("bytes=9500-", [br(9500, 9999)]),  # final 500 bytes, open form
        ("bytes=0-0,-1", [br(0, 0), br(9999, 9999)]),  # first and last bytes
        ("bytes=0-99999", [br(0, 9999)]),  # last-pos past the end is clamped
        ("bytes=-20000", [br(0, 9999)]),  # suffix longer than the representation
        ("bytes=0009-0010", [br(9, 10)]),  # leading zeros are still 1*DIGIT
    ],
)
def test_byte_range_forms_rfc9110_14_1_2(header: str, expected: list[ByteRange]) -> None:
    assert parse_range(header, 10000) == expected


def test_unit_is_case_insensitive_rfc9110_14_1() -> None:
    assert parse_range("Bytes=1-2", 10) == [br(1, 2)]
    assert parse_range("BYTES=1-2", 10) == [br(1, 2)]


def test_list_whitespace_and_empty_members_rfc9110_5_6_1() -> None:
    # OWS around commas, empty list elements and surrounding OWS are all fine
    assert parse_range("  bytes=0-1 ,\t4-5 , , 8-9\t", 10) == [br(0, 1), br(4, 5), br(8, 9)]


def test_request_order_kept_when_nothing_overlaps_rfc9110_14_6() -> None:
    assert parse_range("bytes=8-9,0-1", 10) == [br(8, 9), br(0, 1)]


# -- ignored headers: serve 200 whole (§14.2) -----------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "items=0-1",  # other unit
        "bytes=abc",
        "bytes=5-2",  # last-pos < first-pos is invalid (§14.1.1)
        "bytes=",
        "bytes=-",
        "bytes= , ",  # no range-spec at all
        "bytes",
        "=0-1",
        "bytes=0-1,abc",  # one invalid member spoils the whole set
        "bytes=0-1,5-2",
        "bytes = 0-1",  # no whitespace allowed around "="
        "bytes=0 -1",  # nor inside a range-spec
        "bytes=+1-2",
        "bytes=1_0-20",  # int() would accept this; the grammar does not
        "bytes=\u0661-\u0662",  # non-ASCII digits
        "bytes=0-1;q=1",
        "bytes=--1",
        "bytes=0-1-2",
        "bytes=0-1, bytes=2-3",  # a repeated Range field joined by the server
        "bytes=" + "9" * 5000 + "-",  # absurdly long number
    ],
)
def test_invalid_or_foreign_range_is_ignored_rfc9110_14_2(header: str | None) -> None:
    assert parse_range(header, 100) is None


# -- satisfiability (§14.1.1, §15.5.17) ----------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["bytes=-0", "bytes=100-", "bytes=100-200", "bytes=1000-,-0", "bytes=99999999999999999999999999-"],
)
def test_no_satisfiable_range_raises_rfc9110_14_1_1(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_unsatisfiable_members_are_dropped_rfc9110_14_1_1() -> None:
    assert parse_range("bytes=500-600,-0,0-9", 100) == [br(0, 9)]


def test_huge_numbers_are_exact_not_overflowing_rfc9110_14_1_2() -> None:
    huge = "9" * 40
    assert parse_range(f"bytes=0-{huge}", 100) == [br(0, 99)]
    assert parse_range(f"bytes=-{huge}", 100) == [br(0, 99)]
    big = 2**70
    assert parse_range(f"bytes={big - 10}-", big) == [br(big - 10, big - 1)]
    assert br(big - 10, big - 1).content_range(big) == f"bytes {big - 10}-{big - 1}/{big}"


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=-1", "bytes=0-"])
def test_zero_length_representation_is_never_satisfiable_rfc9110_14_1_1(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, 0)
    assert info.value.content_range == "bytes */0"


def test_zero_length_still_ignores_invalid_headers_rfc9110_14_2() -> None:
    assert parse_range("bytes=abc", 0) is None


# -- coalescing and abuse (§14.2) -----------------------------------------------------


def test_overlapping_ranges_are_coalesced_rfc9110_14_2() -> None:
    assert parse_range("bytes=50-59,0-9,5-20", 100) == [br(0, 20), br(50, 59)]


def test_adjacent_ranges_are_coalesced_rfc9110_14_2() -> None:
    assert parse_range("bytes=0-4,5-9", 100) == [br(0, 9)]


def test_suffix_overlapping_open_range_coalesces_rfc9110_14_2() -> None:
    assert parse_range("bytes=90-,-5", 100) == [br(90, 99)]


def test_hundred_tiny_disjoint_ranges_are_refused_rfc9110_14_2() -> None:
    header = "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(100))
    assert parse_range(header, 1000) is None
    assert parse_range(header, 1000, max_ranges=100) == [br(2 * i, 2 * i) for i in range(100)]


def test_hundred_tiny_adjacent_ranges_collapse_to_one_rfc9110_14_2() -> None:
    order = list(range(100))
    random.Random(5).shuffle(order)
    header = "bytes=" + ",".join(f"{i}-{i}" for i in order)
    assert parse_range(header, 1000) == [br(0, 99)]


def test_same_range_repeated_many_times_collapses_rfc9110_14_2() -> None:
    assert parse_range("bytes=" + ",".join(["0-"] * 1000), 10) == [br(0, 9)]


def test_max_ranges_boundary_rfc9110_14_2() -> None:
    three = "bytes=0-0,2-2,4-4"
    assert parse_range(three, 10, max_ranges=3) == [br(0, 0), br(2, 2), br(4, 4)]
    assert parse_range(three, 10, max_ranges=2) is None


def test_coalesce_sorts_and_merges() -> None:
    assert coalesce([br(10, 12), br(0, 3), br(4, 5), br(11, 20)]) == [br(0, 5), br(10, 20)]
    assert coalesce([]) == []


@pytest.mark.parametrize(
    "size,max_ranges,error",
    [(-1, 32, ValueError), (10, 0, ValueError), (True, 32, TypeError), (1.5, 32, TypeError), (10, "3", TypeError)],
)
def test_nonsense_arguments_raise(size: object, max_ranges: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_range("bytes=0-1", size, max_ranges)  # type: ignore[arg-type]


# -- multipart/byteranges (§14.6) ----------------------------------------------------


def assemble(plan: MultipartPlan, payload: bytes) -> bytes:
    body = b"".join(pre + payload[r.start : r.end + 1] for pre, r in plan.parts)
    return body + plan.epilogue


def test_multipart_preamble_bytes_exact_rfc9110_14_6() -> None:
    plan = plan_multipart([br(0, 49), br(100, 149)], 1024, "text/plain", "THIS_STRING_SEPARATES")
    assert plan.content_type == "multipart/byteranges; boundary=THIS_STRING_SEPARATES"
    assert plan.parts[0] == (
        b"\r\n--THIS_STRING_SEPARATES\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-49/1024\r\n\r\n",
        br(0, 49),
    )
    assert plan.parts[1][0] == (
        b"\r\n--THIS_STRING_SEPARATES\r\nContent-Type: text/plain\r\nContent-Range: bytes 100-149/1024\r\n\r\n"
    )
    assert plan.epilogue == b"\r\n--THIS_STRING_SEPARATES--\r\n"


def test_multipart_content_length_is_exact_rfc9110_14_6() -> None:
    ranges = parse_range("bytes=1000-,0-0,300-499", len(PAYLOAD))
    assert ranges is not None
    plan = plan_multipart(ranges, len(PAYLOAD), "application/octet-stream", "b0undary")
    body = assemble(plan, PAYLOAD)
    assert len(body) == plan.content_length
    expected = (
        b"\r\n--b0undary\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 1000-1023/1024\r\n\r\n"
        + PAYLOAD[1000:]
        + b"\r\n--b0undary\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-0/1024\r\n\r\n"
        + PAYLOAD[:1]
        + b"\r\n--b0undary\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 300-499/1024\r\n\r\n"
        + PAYLOAD[300:500]
        + b"\r\n--b0undary--\r\n"
    )
    assert body == expected


def test_multipart_body_parses_back_with_email_rfc9110_14_6() -> None:
    ranges = [br(0, 9), br(500, 767), br(1023, 1023)]
    plan = plan_multipart(ranges, len(PAYLOAD), "application/octet-stream", new_boundary(random.Random(1)))
    head = f"Content-Type: {plan.content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + assemble(plan, PAYLOAD))
    parts = list(message.iter_parts())
    assert len(parts) == 3
    for part, r in zip(parts, ranges):
        assert part["Content-Range"] == f"bytes {r.start}-{r.end}/1024"
        assert part.get_content_type() == "application/octet-stream"
        assert part.get_payload(decode=True) == PAYLOAD[r.start : r.end + 1]


def test_multipart_without_part_content_type_rfc9110_14_6() -> None:
    plan = plan_multipart([br(0, 0)], 5, None, "x")
    assert plan.parts[0][0] == b"\r\n--x\r\nContent-Range: bytes 0-0/5\r\n\r\n"
    assert plan.content_length == len(plan.parts[0][0]) + 1 + len(b"\r\n--x--\r\n")


def test_part_content_type_may_carry_obs_text_rfc9110_5_5_14_6() -> None:
    """RFC 9110 §5.5: a field value is VCHAR, obs-text (%x80-FF), SP and HTAB, so a
    Content-Type an origin sent in latin-1 is repeated in each part byte for byte."""
    plan = plan_multipart([br(0, 0)], 5, "text/plain; title=caf\u00e9\tx", "x")
    assert plan.parts[0][0] == b"\r\n--x\r\nContent-Type: text/plain; title=caf\xe9\tx\r\nContent-Range: bytes 0-0/5\r\n\r\n"
    assert [is_field_value(v) for v in ("a\xff b\t", "", "a\rb", "a\x00", "a\x7f", "\u0100")] == [True, True, False, False, False, False]


def test_boundary_needing_quotes_is_quoted_in_header_rfc2046_5_1_1() -> None:
    plan = plan_multipart([br(0, 0)], 5, "text/plain", "a:b c")
    assert plan.content_type == 'multipart/byteranges; boundary="a:b c"'
    assert plan.parts[0][0].startswith(b"\r\n--a:b c\r\n")


@pytest.mark.parametrize(
    "boundary", ["", "x" * 71, "ends in space ", "semi;colon", 'quo"te', "new\r\nline", "caf\u00e9"]
)
def test_invalid_boundary_raises_rfc2046_5_1_1(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        plan_multipart([br(0, 0)], 5, "text/plain", boundary)


def test_multipart_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        plan_multipart([], 5, "text/plain", "x")
    with pytest.raises(ValueError, match="does not fit"):
        plan_multipart([br(0, 5)], 5, "text/plain", "x")
    with pytest.raises(ValueError, match="field value"):
        plan_multipart([br(0, 0)], 5, "text/plain\r\nX-Injected: 1", "x")
    with pytest.raises(ValueError, match="field value"):
        plan_multipart([br(0, 0)], 5, "text/\u0100", "x")  # beyond latin-1: no wire form
    with pytest.raises(TypeError):
        plan_multipart([(0, 1)], 5, "text/plain", "x")  # type: ignore[list-item]


def test_new_boundary_is_deterministic_with_rng_and_valid() -> None:
    a, b = new_boundary(random.Random(42)), new_boundary(random.Random(42))
    assert a == b and len(a) == 32 and int(a, 16) >= 0
    fresh = new_boundary()
    assert len(fresh) == 32 and fresh != new_boundary()
    plan_multipart([br(0, 0)], 1, None, fresh)  # accepted as an RFC 2046 boundary
