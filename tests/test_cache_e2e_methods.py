"""HTTP caching conformance of a real `chordcdn edge` process, end to end:
methods passed through and invalidation, hop-by-hop fields, interim (1xx)
responses, stale responses, bad input, PURGE. The harness is in edgecase.py;
storing, freshness and validation are in test_cache_e2e.py.

Every test names the RFC section it checks.
"""

from __future__ import annotations

import pytest
import trio

from .edgecase import (
    FRESH,
    PURGE_TOKEN,
    STALE_WAIT,
    EdgeUnderTest,
    assert_forwarded,
    assert_hit,
    new_case_id,
    raw_exchange,
)

# -- invalidation and methods (RFC 9111 §4.4, RFC 9110 §9) ------------------------------


@pytest.mark.parametrize("method", ["POST", "M-SEARCH", "FROB"])
async def test_unsafe_method_invalidates_and_reaches_the_origin_with_its_body(edge: EdgeUnderTest, method: str) -> None:
    """RFC 9111 §4.4: a non-error response to an unsafe (or unknown) method
    invalidates the target URI's stored responses; RFC 9110 §9.1: methods are
    extensible, a proxy forwards them with their content."""
    steps = [{"headers": [FRESH]}, {"body": "done"}, {"headers": [FRESH]}]
    result = await edge.run_case(steps, [None, {"method": method, "body": "abc"}, None])
    r1, r2, r3 = result
    assert_forwarded(r1, result)
    assert_forwarded(r2, result)
    assert r2.status == 200 and r2.body == b"done", str(result)
    assert result.state[1]["method"] == method and result.state[1]["body"] == "abc", f"the {method} body must reach the origin:\n{result}"
    assert_forwarded(r3, result)


async def test_location_on_the_same_origin_invalidated(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.4: a cache MAY invalidate the URIs in Location and
    Content-Location when on the same origin (the suite checks it); RFC 9110
    §10.2.2: Location reaches the client as the origin sent it."""
    case_id = new_case_id()
    target = f"/test/{case_id}/location_target"
    steps = [{"headers": [FRESH]}, {"headers": [["Location", target]], "body": "moved"}, {"headers": [FRESH]}]
    result = await edge.run_case(steps, [{"path": "/location_target"}, {"method": "POST", "body": "abc"}, {"path": "/location_target"}], case_id)
    r1, r2, r3 = result
    assert_forwarded(r1, result)
    assert_forwarded(r2, result)
    assert r2.header("location") == target, f"Location must pass through unchanged:\n{result}"
    assert_forwarded(r3, result)


async def test_unknown_method_forwarded_with_body_and_answer(edge: EdgeUnderTest) -> None:
    """RFC 9110 §9.1 and §16.1: a method is any token; an intermediary forwards
    one it does not know, with its content, and relays the answer."""
    result = await edge.run_case([{"status": 207, "body": "frobbed!", "headers": [["X-Answer", "42"]]}], [{"method": "FROB", "body": "hello frob"}])
    answer = result[0]
    assert answer.status == 207 and answer.body == b"frobbed!" and answer.header("x-answer") == "42", str(result)
    assert result.state and result.state[0]["method"] == "FROB" and result.state[0]["body"] == "hello frob", str(result)


# -- hop-by-hop fields (RFC 9110 §7.6.1) ---------------------------------------------------


async def test_hop_by_hop_response_fields_not_forwarded_nor_stored(edge: EdgeUnderTest) -> None:
    """RFC 9110 §7.6.1: a proxy removes the fields Connection names (and
    Connection itself) before forwarding; RFC 9111 §3.1: and does not store them."""
    headers = [FRESH, ["Connection", "a"], ["a", "1"], ["c", "3"]]
    result = await edge.run_case([{"headers": headers}] * 2)
    r1, r2 = result
    assert_forwarded(r1, result)
    assert_hit(r2, result)
    for exchange in (r1, r2):
        assert exchange.header("c") == "3", str(result)
        assert not exchange.has("a"), f"a field named in Connection was forwarded:\n{result}"
        assert (exchange.header("connection") or "").lower() in ("", "keep-alive", "close"), str(result)


async def test_hop_by_hop_request_fields_not_forwarded(edge: EdgeUnderTest) -> None:
    """RFC 9110 §7.6.1: Connection, the fields it names, and Keep-Alive are not
    forwarded upstream; end-to-end fields are."""
    request = {"headers": [("Connection", "x"), ("x", "1"), ("Keep-Alive", "timeout=5"), ("End-To-End", "yes")]}
    result = await edge.run_case([{"headers": [FRESH]}], [request])
    assert_forwarded(result[0], result)
    seen = result.state[0]["headers"]
    assert seen.get("end-to-end") == "yes", str(seen)
    assert "x" not in seen and "keep-alive" not in seen, f"hop-by-hop request fields reached the origin: {seen}"
    assert "x" not in (seen.get("connection") or "").lower().replace(" ", "").split(","), f"Connection: x was forwarded: {seen}"


# -- stale responses (RFC 5861, RFC 9111 §4.2.4) ------------------------------------------


async def test_stale_while_revalidate_serves_stale_and_revalidates_in_the_background(edge: EdgeUnderTest) -> None:
    """RFC 5861 §3: within stale-while-revalidate a cache serves the stale response
    at once and revalidates it in the background; the refreshed response then serves
    later requests. The background request carries the current client's Req-Num."""
    steps = [
        {"headers": [["Cache-Control", "max-age=1, stale-while-revalidate=30"], ["ETag", '"one"'], ["X-Version", "1"]], "body": "one"},
        {"pause": 1.0, "headers": [FRESH, ["ETag", '"two"'], ["X-Version", "2"]], "body": "two"},
        {"headers": [FRESH, ["X-Version", "3"]], "body": "three"},
    ]
    async with edge.case(steps) as case:
        r1 = await case.send(1)
        await trio.sleep(STALE_WAIT)
        r2 = await case.send(2)
        with trio.move_on_after(5):
            while len(case.state()) < 2 or case.state()[1].get("response_status") is None:
                await trio.sleep(0.05)
        await trio.sleep(0.2)  # the answer on its way back into the cache
        r3 = await case.send(3)
        result = case.result()
    assert_forwarded(r1, result)
    assert_hit(r2, result)
    assert r2.body == b"one" and r2.header("x-version") == "1", str(result)
    assert r2.elapsed < 0.8, f"the stale response must be served without waiting for the origin ({r2.elapsed:.2f} s):\n{result}"
    assert result.origin_nums[:2] == [1, 2], f"expected a background revalidation carrying Req-Num 2:\n{result}"
    assert_hit(r3, result)
    assert r3.body == b"two" and r3.header("x-version") == "2", f"the background answer must replace the stale one:\n{result}"


async def test_stale_if_error_serves_stale_on_a_500(edge: EdgeUnderTest) -> None:
    """RFC 5861 §4: within stale-if-error a cache may serve the stale response
    when the origin answers 500."""
    steps = [
        {"headers": [["Cache-Control", "max-age=1, stale-if-error=30"], ["X-Stored", "yes"]], "body": "stored"},
        {"status": 500, "body": "boom"},
    ]
    result = await edge.run_case(steps, [{"sleep_after": STALE_WAIT}, None])
    first, second = result
    assert_forwarded(first, result)
    assert second.status == 200 and second.body == b"stored" and second.header("x-stored") == "yes", f"expected the stale copy:\n{result}"
    assert_hit(second, result)
    assert result.origin_nums == [1, 2], f"the origin must have been asked first:\n{result}"


async def test_must_revalidate_with_the_origin_down_gives_an_error_without_stored_headers(edge: EdgeUnderTest) -> None:
    """RFC 9111 §5.2.2.2 and §4.2.4: a must-revalidate response is never served
    stale; when validation fails the cache answers 502/504 of its own, not the
    stored response or its header fields."""
    steps = [{"headers": [["Cache-Control", "max-age=1, must-revalidate"], ["X-Stored", "yes"]], "body": "stored"}, {"disconnect": True}]
    result = await edge.run_case(steps, [{"sleep_after": STALE_WAIT}, None])
    first, second = result
    assert_forwarded(first, result)
    assert second.status in (502, 504), f"expected a gateway error:\n{result}"
    assert not second.has("server-request-count") and not second.has("x-stored"), f"the error carries stored headers:\n{result}"
    assert second.body != b"stored", str(result)
    assert result.origin_nums == [1, 2], str(result)


# -- interim responses (RFC 9110 §15.2) ----------------------------------------------------


EARLY_HINTS = [[103, [["Link", "</styles.css>; rel=preload; as=style"], ["X-My-Header", "hint"]]]]


async def test_interim_103_then_200_final_response_delivered_and_stored(edge: EdgeUnderTest) -> None:
    """RFC 9110 §15.2 (1xx precede the final response; their fields are not
    merged into it) and RFC 9111 §3 (the final 200 is what a cache stores)."""
    steps = [{"interim": EARLY_HINTS, "headers": [FRESH], "body": "final"}, {"headers": [FRESH], "body": "not this"}]
    result = await edge.run_case(steps)
    first, second = result
    assert_forwarded(first, result)
    assert first.status == 200 and first.body == b"final" and not first.has("x-my-header"), str(result)
    assert_hit(second, result)
    assert second.body == b"final" and not second.has("x-my-header"), str(result)


async def test_interim_103_relayed_to_the_client(edge: EdgeUnderTest) -> None:
    """RFC 9110 §15.2: a proxy MUST forward 1xx responses it did not ask for
    (RFC 8297: 103 Early Hints with Link)."""
    case_id = new_case_id()
    edge.origin.script(case_id, [{"interim": EARLY_HINTS, "headers": [FRESH], "body": "final"}])
    request = f"GET /test/{case_id} HTTP/1.1\r\nHost: {edge.address}\r\nReq-Num: 1\r\nConnection: close\r\n\r\n".encode()
    responses = await raw_exchange(edge.address, request)
    statuses = [status for status, _, _ in responses]
    assert statuses and statuses[-1] == 200 and responses[-1][2] == b"final", f"responses: {responses}"
    assert 103 in statuses, f"the 103 was not relayed; the client saw only {statuses}: {responses}"
    hints = dict(responses[statuses.index(103)][1])
    assert hints.get("link") == "</styles.css>; rel=preload; as=style", f"the 103 lost its Link: {responses}"


# -- bad input: no crash, the edge keeps serving ------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "reused"),
    [("max-age=abc", False), ("max-age=3600, max-age=0", True), ("max-age=0, max-age=3600", False), ('max-age="5"', True)],
    ids=["non-numeric", "duplicate-fresh-first", "duplicate-stale-first", "quoted"],
)
async def test_malformed_cache_control(edge: EdgeUnderTest, cache_control: str, reused: bool) -> None:
    """RFC 9111 §5.2 and §4.2.1: an invalid max-age gives no freshness (the
    response is stale); when a directive repeats the first one counts; a
    quoted-string argument is accepted (§5.2: both token and quoted-string forms)."""
    result = await edge.run_case([{"headers": [["Cache-Control", cache_control]]}] * 2)
    assert_forwarded(result[0], result)
    (assert_hit if reused else assert_forwarded)(result[1], result)
    await edge.assert_serving()


async def test_unparseable_date_still_cached(edge: EdgeUnderTest) -> None:
    """RFC 9110 §6.6.1 and RFC 9111 §4.2.3: an invalid Date gives no apparent age
    (a recipient may replace it); max-age still makes the response fresh."""
    result = await edge.run_case([{"headers": [["Date", "foo"], FRESH]}] * 2)
    first, second = result
    assert_forwarded(first, result)
    assert first.status == 200
    assert_hit(second, result)
    assert (second.header("age") or "").isdigit(), str(result)
    await edge.assert_serving()


async def test_content_length_shorter_than_the_body_stores_exactly_that_many_bytes(edge: EdgeUnderTest) -> None:
    """RFC 9112 §6.3 (Content-Length frames the message: what follows is not this
    body) and RFC 9111 §3.3 (a stored response is the complete message as framed)."""
    result = await edge.run_case([{"headers": [FRESH], "raw_content_length": 10}] * 2)
    first, second = result
    expected = result.case_id.encode()[:10]
    assert_forwarded(first, result)
    assert first.status == 200 and first.body == expected and first.header("content-length") == "10", str(result)
    assert_hit(second, result)
    assert second.body == expected and second.header("content-length") == "10", str(result)
    await edge.assert_serving()


@pytest.mark.parametrize("transfer_encoding", [None, "foo"], ids=["plain", "unknown-coding"])
async def test_close_delimited_body(edge: EdgeUnderTest, transfer_encoding: str | None) -> None:
    """RFC 9112 §6.3: without Content-Length, or with a Transfer-Encoding whose
    final coding is not chunked, a response body runs until the connection
    closes; Transfer-Encoding is hop-by-hop (RFC 9110 §7.6.1) and not relayed."""
    headers = [FRESH] + ([["Transfer-Encoding", transfer_encoding]] if transfer_encoding else [])
    result = await edge.run_case([{"headers": headers, "close_delimited": True}] * 2)
    first, second = result
    assert_forwarded(first, result)
    assert first.status == 200 and first.body == result.case_id.encode(), str(result)
    assert_hit(second, result)
    assert second.body == result.case_id.encode(), str(result)
    await edge.assert_serving()


# -- PURGE --------------------------------------------------------------------------------


async def test_purge_needs_the_token_then_removes_the_object(edge: EdgeUnderTest) -> None:
    """PURGE (no RFC; the edge's own): without `Authorization: Bearer <token>` it
    is refused with 401 (RFC 9110 §15.5.2, with WWW-Authenticate §11.6.1) and the
    object stays; with it the object is removed, like an invalidation (RFC 9111
    §4.4), and the next GET goes to the origin."""
    assert edge.purge_enabled, edge.startup_note
    steps = [{"headers": [FRESH], "body": f"copy {n}"} for n in (1, 2, 3)]
    async with edge.case(steps) as case:
        r1 = await case.send(1)
        denied = await case.send(None, "PURGE")
        r2 = await case.send(2)
        wrong = await case.send(None, "PURGE", {"Authorization": "Bearer nope"})
        purged = await case.send(None, "PURGE", {"Authorization": f"Bearer {PURGE_TOKEN}"})
        r3 = await case.send(3)
        result = case.result()
    assert_forwarded(r1, result)
    assert denied.status == 401 and denied.has("www-authenticate"), str(result)
    assert wrong.status == 401, str(result)
    assert_hit(r2, result)
    assert r2.body == b"copy 1"
    assert purged.status == 200, str(result)
    assert r3.answered_num == 3 and r3.body == b"copy 3", f"after PURGE the GET must go to the origin:\n{result}"
    assert [(e["method"], e["request_num"]) for e in result.state] == [("GET", 1), ("GET", 3)], f"PURGE must not reach the origin:\n{result}"
