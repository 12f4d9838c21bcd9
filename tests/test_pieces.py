"""edge/pieces.py: partial content as held spans (RFC 9111 §3.3-§3.4, RFC 9110
§14.4-§14.5), checked against a byte-per-position model with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.pieces import Pieces, keepable_piece, parse_content_range, range_value, strong_etag
from edge.policy import request_rules
from edge.ranges import ByteRange, resolve_range, single_range

SIZE = 64
DATA = bytes(range(SIZE))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes 0-4/10", (0, 4, 10)),
        ("BYTES 5-9/10", (5, 9, 10)),  # the range unit is case-insensitive (§14.1)
        (" bytes 3-3/4 ", (3, 3, 4)),
        ("bytes 5-9/*", None),  # unknown complete length: cannot be placed
        ("bytes */10", None),  # an unsatisfied range (416)
        ("bytes 0-10/10", None),  # past the end
        ("bytes 5-4/10", None),  # last before first
        ("bytes -1-4/10", None),
        ("items 0-4/10", None),
        ("bytes 0-4/" + "9" * 20, None),  # a length no representation has
        ("bytes 0-" + "9" * 5000 + "/10", None),  # never parsed as an integer
        (None, None),
    ],
)
def test_content_range_parsing(value: str | None, expected: tuple[int, int, int] | None) -> None:
    parsed = parse_content_range(value)
    assert (None if parsed is None else (parsed.first, parsed.last, parsed.complete)) == expected


def test_only_a_strong_entity_tag_lets_pieces_be_combined() -> None:
    """RFC 9110 §14.5: pieces combine only under the same strong validator."""
    assert strong_etag([("ETag", '"v1"')]) == '"v1"'
    assert strong_etag([("ETag", 'W/"v1"')]) is None
    assert strong_etag([("ETag", "v1")]) is None  # malformed
    assert strong_etag([]) is None
    pieces = Pieces(10, '"v1"')
    assert pieces.accepts('"v1"', 10)
    assert not pieces.accepts('"v2"', 10) and not pieces.accepts('"v1"', 11) and not pieces.accepts(None, 10)


@pytest.mark.parametrize(
    "fields, keep",
    [
        ([("Cache-Control", "max-age=60"), ("ETag", '"a"')], True),
        ([("Cache-Control", "max-age=60"), ("ETag", 'W/"a"')], False),
        ([("Cache-Control", "max-age=60")], False),
        ([("Cache-Control", "no-store"), ("ETag", '"a"')], False),
        ([("Cache-Control", "private"), ("ETag", '"a"')], False),
        ([("Cache-Control", "max-age=60"), ("ETag", '"a"'), ("Vary", "Accept")], False),
        ([("ETag", '"a"'), ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")], True),  # heuristically fresh, as a 200
    ],
)
def test_which_206_responses_may_be_kept(fields: list[tuple[str, str]], keep: bool) -> None:
    """RFC 9111 §3.3: a cache may store a 206 as it would a 200 with its fields."""
    assert keepable_piece(request_rules({}), fields, has_authorization=False) is keep


def test_the_range_asked_for_the_rest() -> None:
    assert range_value(ByteRange(5, 9), 10) == "bytes=5-"
    assert range_value(ByteRange(3, 6), 10) == "bytes=3-6"
    assert single_range("bytes=-5") == (None, 5)
    assert single_range("bytes=0-1,4-5") is None
    assert resolve_range((None, 5), 10) == ByteRange(5, 9)


def test_adding_pieces_joins_adjacent_and_overlapping_spans() -> None:
    pieces = Pieces(10, '"v"').add(0, b"012").add(5, b"56")
    assert pieces.spans == ((0, b"012"), (5, b"56"))
    assert pieces.missing(ByteRange(0, 9)) == ByteRange(3, 9)
    assert pieces.missing(ByteRange(1, 6)) == ByteRange(3, 4)
    pieces = pieces.add(3, b"34")
    assert pieces.spans == ((0, b"0123456"),)
    pieces = pieces.add(6, b"6789")
    assert pieces.complete and pieces.whole() == b"0123456789"
    with pytest.raises(ValueError):
        pieces.add(8, b"89X")  # past the complete length


spans = st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, SIZE)), max_size=8)


@given(spans, st.integers(0, SIZE - 1), st.integers(0, SIZE - 1))
def test_pieces_agree_with_a_model_of_held_bytes(added: list[tuple[int, int]], a: int, b: int) -> None:
    pieces = Pieces(SIZE, '"v"')
    held = [False] * SIZE
    for start, length in added:
        length = min(length, SIZE - start)
        pieces = pieces.add(start, DATA[start : start + length])
        held[start : start + length] = [True] * length
    assert pieces.held == sum(held)
    offsets = [offset for offset, _ in pieces.spans]
    assert offsets == sorted(offsets)
    for (offset, data), (following, _) in zip(pieces.spans, pieces.spans[1:]):
        assert offset + len(data) < following, "spans never touch or overlap"
    for offset, data in pieces.spans:
        assert data == DATA[offset : offset + len(data)]
    wanted = ByteRange(min(a, b), max(a, b))
    inside = held[wanted.start : wanted.end + 1]
    assert pieces.covers(wanted) is all(inside)
    if all(inside):
        assert pieces.read(wanted) == DATA[wanted.start : wanted.end + 1]
        assert pieces.missing(wanted) is None
    else:
        gaps = [wanted.start + index for index, have in enumerate(inside) if not have]
        assert pieces.missing(wanted) == ByteRange(gaps[0], gaps[-1])
    assert pieces.complete is all(held)
