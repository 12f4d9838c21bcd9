"""Partial content through a real `chordcdn edge` against the scripted origin: a
range that misses goes upstream as a range, the 206 is kept as a piece, later
ranges it holds are hits, the rest is asked for with one Range conditioned by
If-Range, and pieces that make the whole are stored as a 200 (RFC 9111 §3.3-§3.4,
RFC 9110 §14.2, §14.5, the http-tests/cache-tests `partial-*` optimal tests). A 206
that may not be kept (weak or no entity-tag, no-store, a Content-Range that lies) is
relayed and forgotten, never a 5xx."""

from __future__ import annotations

from typing import Any

from .edgecase import FRESH, CaseResult, EdgeUnderTest, assert_forwarded, assert_hit

ETAG = ["ETag", '"v1"']
BODY = "0123456789"


def piece(first: int, last: int, *extra: list[str], etag: list[str] = ETAG) -> dict[str, Any]:
    """An origin step answering 206 with bytes first..last of BODY."""
    return {"status": 206, "headers": [FRESH, etag, ["Content-Range", f"bytes {first}-{last}/{len(BODY)}"], *extra], "body": BODY[first : last + 1]}


def ranged(value: str) -> dict[str, Any]:
    return {"headers": {"Range": value}}


def asked(result: CaseResult, index: int, name: str) -> str | None:
    """A field of the index-th request the origin saw."""
    return result.state[index]["headers"].get(name)


async def test_a_kept_piece_answers_smaller_ranges_inside_it(edge: EdgeUnderTest) -> None:
    """cache-tests partial-store-partial-reuse-partial(-byterange, -absent, -suffix)."""
    steps = [piece(5, 9)] + [{"status": 999}] * 4
    result = await edge.run_case(steps, [ranged("bytes=-5"), ranged("bytes=-5"), ranged("bytes=6-8"), ranged("bytes=6-"), ranged("bytes=-1")])
    assert asked(result, 0, "range") == "bytes=-5", f"the client's range goes upstream as it is:\n{result}"
    assert_forwarded(result[0], result)
    for exchange, text in zip(result.exchanges[1:], ["56789", "678", "6789", "9"]):
        assert_hit(exchange, result)
        assert exchange.status == 206 and exchange.body == text.encode(), str(result)
    assert result[2].header("content-range") == "bytes 6-8/10"
    assert result.origin_nums == [1]


async def test_a_plain_get_completes_the_pieces_with_one_range_and_stores_the_whole(edge: EdgeUnderTest) -> None:
    """cache-tests partial-store-partial-complete: the rest is asked for as
    `bytes=5-`, conditioned by If-Range on the pieces' strong entity-tag; the
    combined response is a 200, stored whole for later hits."""
    steps = [piece(0, 4), piece(5, 9, ["A", "2"]), {"status": 999}, {"status": 999}]
    result = await edge.run_case(steps, [ranged("bytes=0-4"), None, None, ranged("bytes=2-7")])
    assert asked(result, 1, "range") == "bytes=5-", str(result)
    assert asked(result, 1, "if-range") == '"v1"', str(result)
    assert result[1].status == 200 and result[1].body == BODY.encode(), str(result)
    assert result[1].header("a") == "2", "the newest piece's fields replace the stored ones (RFC 9111 §3.4)"
    assert result[1].header("content-range") is None
    assert_hit(result[2], result)
    assert result[2].status == 200 and result[2].body == BODY.encode()
    assert_hit(result[3], result)
    assert result[3].status == 206 and result[3].body == b"234567"
    assert result.origin_nums == [1, 2]


async def test_a_range_partly_held_asks_only_for_what_is_missing(edge: EdgeUnderTest) -> None:
    steps = [piece(0, 2), piece(3, 6), {"status": 999}]
    result = await edge.run_case(steps, [ranged("bytes=0-2"), ranged("bytes=1-6"), ranged("bytes=0-6")])
    assert asked(result, 1, "range") == "bytes=3-6", str(result)
    assert result[1].status == 206 and result[1].body == b"123456", str(result)
    assert result[1].header("content-range") == "bytes 1-6/10"
    assert_hit(result[2], result)
    assert result[2].body == b"0123456"


async def test_a_changed_representation_comes_back_whole_and_replaces_the_pieces(edge: EdgeUnderTest) -> None:
    """If-Range failed upstream: a 200 of the new version, stored; no old piece
    is ever combined with it."""
    new = {"headers": [FRESH, ["ETag", '"v2"']], "body": "ABCDEFGHIJ"}
    steps = [piece(0, 4), new, {"status": 999}]
    result = await edge.run_case(steps, [ranged("bytes=0-4"), None, ranged("bytes=0-4")])
    assert result[1].status == 200 and result[1].body == b"ABCDEFGHIJ", str(result)
    assert_hit(result[2], result)
    assert result[2].status == 206 and result[2].body == b"ABCDE", "the old piece was dropped"


async def test_pieces_of_another_entity_tag_are_not_combined(edge: EdgeUnderTest) -> None:
    """RFC 9110 §14.5: an upstream that ignores If-Range and sends a 206 of another
    version: the edge does not splice it onto the old bytes, and fetches the whole.
    (No Req-Num here: the origin answers its requests in order, steps 1, 2, 3.)"""
    steps = [piece(0, 4), piece(5, 9, etag=["ETag", '"v2"']), {"headers": [FRESH, ["ETag", '"v2"']], "body": "ABCDEFGHIJ"}]
    async with edge.case(steps) as case:
        await case.send(None, headers={"Range": "bytes=0-4"})
        whole = await case.send(None)
        seen = case.state()
    assert whole.status == 200 and whole.body == b"ABCDEFGHIJ", str(whole)
    assert [record["headers"].get("range") for record in seen] == ["bytes=0-4", "bytes=5-", None], str(seen)


async def test_pieces_that_may_not_be_kept_are_relayed_and_forgotten(edge: EdgeUnderTest) -> None:
    cases = {
        "weak entity-tag": piece(0, 4, etag=["ETag", 'W/"v1"']),
        "no entity-tag": piece(0, 4, etag=["X-None", "1"]),
        "no-store": piece(0, 4, ["Cache-Control", "no-store"]),
        "Vary": piece(0, 4, ["Vary", "Accept-Language"]),
    }
    for why, step in cases.items():
        result = await edge.run_case([step, step], [ranged("bytes=0-4"), ranged("bytes=0-4")])
        assert [x.status for x in result] == [206, 206] and result[1].body == b"01234", f"{why}:\n{result}"
        assert result.origin_nums == [1, 2], f"{why}: the piece must not be kept:\n{result}"


async def test_a_206_that_lies_about_its_range_is_relayed_not_kept_and_never_a_5xx(edge: EdgeUnderTest) -> None:
    lies = {
        "range past the length": {"status": 206, "headers": [FRESH, ETAG, ["Content-Range", "bytes 0-99/10"]], "body": "01234"},
        "length unlike the body": {"status": 206, "headers": [FRESH, ETAG, ["Content-Range", "bytes 0-8/10"]], "body": "01234"},
        "huge numbers": {"status": 206, "headers": [FRESH, ETAG, ["Content-Range", f"bytes 0-4/{'9' * 5000}"]], "body": "01234"},
        "no Content-Range": {"status": 206, "headers": [FRESH, ETAG], "body": "01234"},
    }
    for why, step in lies.items():
        result = await edge.run_case([step, step], [ranged("bytes=0-4"), ranged("bytes=0-4")])
        assert all(x.status == 206 for x in result), f"{why}:\n{result}"
        assert result.origin_nums == [1, 2], f"{why}: a lying piece must not be kept:\n{result}"
    await edge.assert_serving()


async def test_several_ranges_or_an_open_ended_one_on_a_miss_fetch_the_whole(edge: EdgeUnderTest) -> None:
    """`bytes=0-` (as video players send) asks for everything: the whole is fetched
    once and stored, and the range served from it, as are several ranges."""
    for first_range in ("bytes=0-1,5-6", "bytes=0-", "bytes=3-"):
        steps = [{"headers": [FRESH, ETAG], "body": BODY}, {"status": 999}]
        result = await edge.run_case(steps, [ranged(first_range), ranged("bytes=2-3")])
        assert asked(result, 0, "range") is None, f"{first_range}: the whole representation is fetched"
        assert result[0].status == 206, str(result)
        assert_hit(result[1], result)
        assert result[1].body == b"23"
