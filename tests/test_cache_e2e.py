"""HTTP caching conformance of a real `chordcdn edge` process, end to end:
storing, freshness, Age, validation, Vary, request directives, ranges and HEAD,
CDN-Cache-Control. Pass-through methods, invalidation, hop-by-hop fields, 1xx,
stale handling, PURGE and bad input are in test_cache_e2e_methods.py; the
harness (a scripted origin and an edge process per module, judged as the
http-tests/cache-tests suite judges) is in edgecase.py.

Every test names the RFC section it checks.
"""

from __future__ import annotations

import json

import httpx
import pytest

from .edgecase import (
    FRESH,
    STALE_WAIT,
    EdgeUnderTest,
    assert_forwarded,
    assert_hit,
    new_case_id,
)

# -- the harness itself -------------------------------------------------------------------


async def test_harness_config_put_and_state_get_pass_through_the_edge(edge: EdgeUnderTest) -> None:
    """RFC 9110 §9.3.4 (PUT with its body, forwarded by the proxy) and RFC 9111 §3
    (no freshness and no validator: `/state` must not be stored). The suite itself
    configures and reads back every test through the proxy."""
    case_id = new_case_id()
    steps = [{"headers": [["X-From-Config", "yes"]], "body": "configured"}]
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as client:
        put = await client.put(f"/config/{case_id}", content=json.dumps(steps), headers={"Content-Type": "application/json"})
        assert put.status_code == 201, f"PUT /config through the edge: {put.status_code} {put.headers} {put.text!r}"
        again = await client.put(f"/config/{case_id}", content=json.dumps(steps), headers={"Content-Type": "application/json"})
        assert again.status_code == 409, f"a second PUT must reach the origin too: {again.status_code}"
        got = await client.get(f"/test/{case_id}", headers={"Req-Num": "1"})
        assert got.status_code == 200 and got.text == "configured" and got.headers.get("x-from-config") == "yes"
        state = await client.get(f"/state/{case_id}")
        assert state.status_code == 200 and state.json() == edge.origin.state(case_id)
        assert [entry["request_num"] for entry in state.json()] == [1]
        await client.get(f"/test/{case_id}", headers={"Req-Num": "2"})  # a miss: no step 2 (409)
        state2 = await client.get(f"/state/{case_id}")
        assert len(state2.json()) == 2, f"/state was served from the cache: {state2.headers}"


# -- storing and reusing (RFC 9111 §3, §4.2) ----------------------------------------------


async def test_max_age_stored_and_reused_with_age_and_original_date(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.2.1 (max-age gives the freshness lifetime), §4.2.3 (a cache
    sends Age on a reused response), RFC 9110 §6.6.1 (the Date of a stored response
    is the origin's, not regenerated)."""
    result = await edge.run_case([{"headers": [FRESH, ["Date", -2], ["X-Stored", "1"]]}, {"headers": [FRESH, ["X-Stored", "2"]]}])
    first, second = result
    assert_forwarded(first, result)
    assert first.status == 200 and first.body == result.case_id.encode()
    assert_hit(second, result)
    assert second.status == 200 and second.body == first.body and second.header("x-stored") == "1"
    age = second.header("age")
    assert age is not None and age.isdigit(), f"a hit must carry an integer Age: {second}"
    assert int(age) >= 2, f"Age must include the apparent age from Date (2 s old on arrival): {second}"
    assert second.header("date") == first.header("date"), f"the hit's Date must be the stored one:\n{result}"
    assert result.origin_nums == [1]


async def test_no_store_not_reused(edge: EdgeUnderTest) -> None:
    """RFC 9111 §5.2.2.5: no-store: a cache MUST NOT store any part of the response."""
    result = await edge.run_case([{"headers": [["Cache-Control", "max-age=3600, no-store"]]}] * 2)
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)


async def test_private_not_reused_by_a_shared_cache(edge: EdgeUnderTest) -> None:
    """RFC 9111 §5.2.2.7: a shared cache MUST NOT store a response with unqualified private."""
    result = await edge.run_case([{"headers": [["Cache-Control", "private, max-age=3600"]]}] * 2)
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)


async def test_response_to_authorization_not_reused(edge: EdgeUnderTest) -> None:
    """RFC 9111 §3.5: a shared cache MUST NOT use a response to a request with
    Authorization for other requests unless the response explicitly allows it
    (public, s-maxage, must-revalidate); max-age alone does not."""
    result = await edge.run_case([{"headers": [FRESH]}] * 2, [{"headers": {"Authorization": "FOO"}}, None])
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)
    assert result.state[0]["headers"].get("authorization") == "FOO", f"Authorization must reach the origin:\n{result}"


@pytest.mark.parametrize(
    ("cache_control", "reused"),
    [("max-age=3600, s-maxage=0", False), ("max-age=0, s-maxage=3600", True)],
    ids=["s-maxage-shorter", "s-maxage-longer"],
)
async def test_s_maxage_overrides_max_age(edge: EdgeUnderTest, cache_control: str, reused: bool) -> None:
    """RFC 9111 §5.2.2.10 and §4.2.1: a shared cache uses s-maxage in preference to max-age."""
    result = await edge.run_case([{"headers": [["Cache-Control", cache_control]]}] * 2)
    assert_forwarded(result[0], result)
    (assert_hit if reused else assert_forwarded)(result[1], result)


@pytest.mark.parametrize(
    ("age", "reused"),
    [("7200", False), ("abc", True), ("-7200", True), ("2147483648", False), ("99999999999999999999999999", False)],
    ids=["7200", "non-numeric", "negative", "2pow31", "huge"],
)
async def test_upstream_age(edge: EdgeUnderTest, age: str, reused: bool) -> None:
    """RFC 9111 §4.2.3 (the upstream Age counts in current_age: Age 7200 with
    max-age=3600 is stale on arrival), §5.1 and §1.2.2 (Age is delta-seconds: an
    invalid value is ignored, one that overflows is taken as 2^31); the Age of a
    forwarded response reaches the client unchanged (RFC 9110 §7.6)."""
    result = await edge.run_case([{"headers": [["Date", 0], FRESH, ["Age", age]]}] * 2)
    first, second = result
    assert_forwarded(first, result)
    assert first.status == 200 and first.header("age") == age, f"the forwarded Age must be unchanged:\n{result}"
    if reused:
        assert_hit(second, result)
        assert (second.header("age") or "").isdigit(), f"the hit's Age must be an integer: {second}"
    else:
        assert_forwarded(second, result)
    await edge.assert_serving()


@pytest.mark.parametrize(
    "expires",
    [-3600, "0", "Thu, 18 Aug 50 02:01:18 GMT", "Thu, 18 Aug 2050 02:01:18 UTC", "yesterday"],
    ids=["past", "zero", "2-digit-year", "utc", "words"],
)
async def test_expires_past_or_invalid_not_reused(edge: EdgeUnderTest, expires: int | str) -> None:
    """RFC 9111 §5.3: an Expires in the past is stale; a cache MUST interpret an
    invalid date (especially "0") as a time in the past; §4.2.1: lifetime =
    Expires − Date."""
    result = await edge.run_case([{"headers": [["Date", 0], ["Expires", expires]]}] * 2)
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)


async def test_past_expires_precludes_heuristic_freshness(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.2.2: a cache MUST NOT use heuristics when an explicit
    expiration time (here a past Expires) is present, even with Last-Modified."""
    result = await edge.run_case([{"headers": [["Date", 0], ["Expires", -5000], ["Last-Modified", -100000]]}] * 2)
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)


@pytest.mark.parametrize(("status", "reused"), [(200, True), (599, False), (201, False), (403, False)])
async def test_heuristic_freshness_only_for_heuristically_cacheable_statuses(edge: EdgeUnderTest, status: int, reused: bool) -> None:
    """RFC 9111 §4.2.2 (heuristic freshness from Last-Modified, for statuses
    "heuristically cacheable" per RFC 9110 §15.1 or with public) and §3 (no
    explicit freshness and not heuristically cacheable: not storable); RFC 9110
    §15 (any status, e.g. 599, is relayed as it is)."""
    body = f"status {status}"
    result = await edge.run_case([{"status": status, "body": body, "headers": [["Date", 0], ["Last-Modified", -86400]]}] * 2)
    first, second = result
    assert_forwarded(first, result)
    assert first.status == status and first.body == body.encode(), f"the status and body must be relayed as they are:\n{result}"
    if reused:
        assert_hit(second, result)
    else:
        assert_forwarded(second, result)
    assert second.status == status and second.body == body.encode(), str(result)


# -- validation (RFC 9111 §4.3) ------------------------------------------------------------


async def test_stale_must_revalidate_validated_with_stored_etag_and_304_updates_headers(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.3.1 (a stale response is validated with its ETag in
    If-None-Match, verbatim), §4.3.3 and §4.3.4 (a 304 freshens the stored response
    and updates its header fields; the client gets the stored 200 and body), §3.2;
    §5.2.2.2 (must-revalidate: never served stale)."""
    etag = '"v1-abc"'
    steps = [
        {"headers": [["Cache-Control", "max-age=1, must-revalidate"], ["ETag", etag], ["X-Version", "1"]], "body": "stored body"},
        {"validated": "etag", "headers": [["Cache-Control", "max-age=3600, must-revalidate"], ["ETag", etag], ["X-Version", "2"]]},
        {"headers": [FRESH, ["X-Version", "3"]], "body": "not this"},
    ]
    result = await edge.run_case(steps, [{"sleep_after": STALE_WAIT}, None, None])
    first, second, third = result
    assert_forwarded(first, result)
    assert second.status == 200, f"the revalidated response must reach the client as the stored 200:\n{result}"
    assert_forwarded(second, result)
    assert second.body == b"stored body" and second.header("x-version") == "2", f"304 must update the stored headers:\n{result}"
    assert result.state[1]["headers"].get("if-none-match") == etag, f"the upstream INM must be the stored ETag:\n{result}"
    assert_hit(third, result)
    assert third.body == b"stored body" and third.header("x-version") == "2", str(result)
    assert third.header("cache-control") == "max-age=3600, must-revalidate", str(result)
    assert result.origin_nums == [1, 2]


async def test_client_conditional_answered_from_a_fresh_stored_response(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.3.2: a cache evaluates a client's If-None-Match against a fresh
    stored response and answers 304 itself (with the ETag, RFC 9110 §15.4.5)."""
    result = await edge.run_case(
        [{"headers": [FRESH, ["ETag", '"abc"']]}, {"headers": [FRESH, ["ETag", '"abc"']]}], [None, {"headers": {"If-None-Match": '"abc"'}}]
    )
    first, second = result
    assert_forwarded(first, result)
    assert second.status == 304 and second.body == b"", f"expected a 304 from the cache:\n{result}"
    assert_hit(second, result)
    assert second.header("etag") == '"abc"', str(result)
    assert result.origin_nums == [1]


# -- Vary (RFC 9111 §4.1) -----------------------------------------------------------------


async def test_vary_selects_variants_stored_side_by_side(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.1: a stored response is reused only when the headers its Vary
    names match the presenting request; a cache may keep several variants."""
    steps = [{"headers": [FRESH, ["Vary", "Foo"]], "body": f"variant {n}"} for n in (1, 2, 3, 4)]
    foo = [{"headers": {"Foo": value}} for value in ("1", "2", "1", "2")]
    result = await edge.run_case(steps, foo)
    r1, r2, r3, r4 = result
    assert_forwarded(r1, result)
    assert_forwarded(r2, result)
    assert_hit(r3, result)
    assert r3.served == 1 and r3.body == b"variant 1", f"Foo: 1 must get the first variant:\n{result}"
    assert_hit(r4, result)
    assert r4.served == 2 and r4.body == b"variant 2", f"Foo: 2 must get the second variant, stored beside the first:\n{result}"
    assert result.state[0]["headers"].get("foo") == "1" and result.state[1]["headers"].get("foo") == "2"


async def test_vary_star_never_reused(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.1: a Vary value of "*" always fails to match."""
    result = await edge.run_case([{"headers": [FRESH, ["Vary", "*"]]}] * 2, [{"headers": {"Foo": "1"}}] * 2)
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)


# -- request directives (RFC 9111 §5.2.1) --------------------------------------------------


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0"])
async def test_request_directive_forces_a_forward(edge: EdgeUnderTest, directive: str) -> None:
    """RFC 9111 §5.2.1.4 (no-cache: do not use a stored response without
    successful validation) and §5.2.1.1 (max-age=0: the client will not accept a
    response older than 0 s)."""
    result = await edge.run_case([{"headers": [FRESH]}] * 2, [None, {"headers": {"Cache-Control": directive}}])
    assert_forwarded(result[0], result)
    assert_forwarded(result[1], result)
    assert result[1].status == 200


async def test_only_if_cached_on_an_uncached_url_gives_504_without_asking_the_origin(edge: EdgeUnderTest) -> None:
    """RFC 9111 §5.2.1.7: only-if-cached: the cache answers from storage or with 504."""
    result = await edge.run_case([{"headers": [FRESH]}], [{"headers": {"Cache-Control": "only-if-cached"}}])
    assert result[0].status == 504, str(result)
    assert result.state == [], f"only-if-cached must not contact the origin:\n{result}"


async def test_max_stale_allows_a_stale_hit(edge: EdgeUnderTest) -> None:
    """RFC 9111 §5.2.1.2 and §4.2.4: with max-stale=N the client accepts a
    response stale by up to N seconds."""
    result = await edge.run_case(
        [{"headers": [["Cache-Control", "max-age=1"]]}, {"headers": [FRESH]}],
        [{"sleep_after": STALE_WAIT}, {"headers": {"Cache-Control": "max-stale=60"}}],
    )
    assert_forwarded(result[0], result)
    assert_hit(result[1], result)
    assert int(result[1].header("age") or 0) >= 1, str(result)


async def test_unknown_request_directive_and_pragma_ignored(edge: EdgeUnderTest) -> None:
    """RFC 9111 §5.2 (unknown directives are ignored) and §5.4 (Pragma is ignored
    when Cache-Control is present; `Pragma: foo` means nothing)."""
    request = {"headers": {"Cache-Control": "nothing-to-see-here", "Pragma": "foo"}}
    result = await edge.run_case([{"headers": [FRESH]}] * 2, [request, request])
    assert_forwarded(result[0], result)
    assert_hit(result[1], result)


# -- other uses of a stored response -------------------------------------------------------


async def test_range_served_from_a_stored_200(edge: EdgeUnderTest) -> None:
    """RFC 9110 §14.2 and RFC 9111 §3.4/§4: a cache may answer a range request
    from a stored complete 200 with a 206 carrying the stored header fields."""
    steps = [{"headers": [FRESH, ["A", "1"]], "body": "0123456789"}, {"headers": [FRESH, ["A", "2"]], "body": "0123456789"}]
    result = await edge.run_case(steps, [None, {"headers": {"Range": "bytes=0-1"}}])
    first, second = result
    assert_forwarded(first, result)
    assert second.status == 206 and second.body == b"01", str(result)
    assert second.header("content-range") == "bytes 0-1/10", str(result)
    assert second.header("a") == "1", f"the 206 must carry the stored headers:\n{result}"
    assert_hit(second, result)
    assert result.origin_nums == [1]


async def test_head_answered_from_a_stored_get(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4 and RFC 9110 §9.3.2: a HEAD may be answered from a stored GET
    response, with the same header fields and no content."""
    result = await edge.run_case([{"headers": [FRESH, ["X-Stored", "yes"]]}] * 2, [None, {"method": "HEAD"}])
    first, second = result
    assert_forwarded(first, result)
    assert second.status == 200 and second.body == b"" and second.header("x-stored") == "yes", str(result)
    assert_hit(second, result)
    assert second.header("content-length") in (None, str(len(first.body))), str(result)
    assert result.origin_nums == [1]


# -- CDN-Cache-Control (RFC 9213) ----------------------------------------------------------


async def test_cdn_cache_control_overrides_cache_control(edge: EdgeUnderTest) -> None:
    """RFC 9213 §2.1-2.2: a CDN that honours CDN-Cache-Control uses it instead of
    Cache-Control: `no-store` there does not stop `CDN-Cache-Control: max-age=100`."""
    headers = [["Cache-Control", "no-store"], ["CDN-Cache-Control", "max-age=100"]]
    result = await edge.run_case([{"headers": headers}] * 2)
    assert_forwarded(result[0], result)
    assert_hit(result[1], result)


# -- optional parts of RFC 9111 done by the edge -------------------------------------------


async def test_a_clients_if_none_match_goes_upstream_on_a_miss(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.3.2 (a cache may forward a request's preconditions when it has no
    stored response to evaluate them against): the origin's 304 reaches the client
    and no body is sent; the 304 itself is not stored."""
    steps = [{"status": 304, "headers": [["ETag", '"v1"'], FRESH]}, {"headers": [FRESH, ["ETag", '"v1"']], "body": "whole"}]
    result = await edge.run_case(steps, [{"headers": {"If-None-Match": '"v1"'}}, None])
    first, second = result
    assert first.status == 304 and first.body == b"", str(result)
    assert result.state[0]["headers"].get("if-none-match") == '"v1"', f"the client's entity tag must reach the origin:\n{result}"
    assert second.status == 200 and second.body == b"whole", f"a 304 must not be stored as the response:\n{result}"


async def test_a_slow_origins_answer_carries_its_age(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.2.3 and §5.1: the time an answer took counts toward its age
    (corrected_age_value), so a forwarded answer that took 1.5 s says Age: 1, and
    the hits after it are no younger."""
    result = await edge.run_case([{"headers": [FRESH], "pause": 1.5}, {}])
    first, second = result
    assert_forwarded(first, result)
    assert first.header("age") == "1", f"the forwarded answer took 1.5 s; its Age must say so:\n{result}"
    assert_hit(second, result)
    assert int(second.header("age") or 0) >= 1, str(result)


async def test_a_head_for_a_stale_response_goes_up_as_head_and_freshens_it(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.3.5: a 200 to an inbound HEAD whose validators and length match
    the stored response updates it as a 304 would; no body is fetched."""
    steps = [
        {"headers": [["Cache-Control", "max-age=1"], ["ETag", '"h1"'], ["X-Version", "1"]], "body": "stored body"},
        {"headers": [FRESH, ["ETag", '"h1"'], ["X-Version", "2"], ["Content-Length", "11"]]},
    ]
    requests = [{"sleep_after": STALE_WAIT}, {"method": "HEAD"}, {"num": 3}]
    result = await edge.run_case(steps, requests)
    first, head, third = result
    assert first.status == 200 and head.status == 200 and head.body == b"", str(result)
    assert [entry["method"] for entry in result.state] == ["GET", "HEAD"], f"the HEAD must go upstream as a HEAD:\n{result}"
    assert head.header("x-version") == "2", str(result)
    assert third.status == 200 and third.body == b"stored body" and third.header("x-version") == "2", f"the HEAD must freshen the stored response:\n{result}"
    assert result.origin_nums == [1, 2], f"the GET after it must be a hit:\n{result}"


async def test_a_head_whose_etag_differs_leaves_the_stored_response_stale(edge: EdgeUnderTest) -> None:
    """RFC 9111 §4.3.5: a HEAD answer for another version does not update the
    stored response; the next GET goes upstream."""
    steps = [
        {"headers": [["Cache-Control", "max-age=1"], ["ETag", '"old"']], "body": "old body"},
        {"headers": [FRESH, ["ETag", '"new"']]},
        {"headers": [FRESH, ["ETag", '"new"']], "body": "new body"},
    ]
    result = await edge.run_case(steps, [{"sleep_after": STALE_WAIT}, {"method": "HEAD"}, None])
    assert result[2].body == b"new body" and result.origin_nums == [1, 2, 3], str(result)


async def test_a_post_answer_with_freshness_and_its_own_content_location_serves_a_later_get(edge: EdgeUnderTest) -> None:
    """RFC 9110 §9.3.3 (a POST response is cacheable with explicit freshness and a
    Content-Location equal to the POST's target) and RFC 9111 §4.4 (the POST first
    invalidates the target; the new answer then stands for it)."""
    case_id = new_case_id()
    steps = [{"headers": [FRESH, ["Content-Location", f"/test/{case_id}"]], "body": "made by POST"}]
    result = await edge.run_case(steps, [{"method": "POST", "body": "input"}, {"num": 2}], case_id=case_id)
    posted, got = result
    assert posted.status == 200 and posted.body == b"made by POST", str(result)
    assert got.status == 200 and got.body == b"made by POST", f"the GET must be answered by the stored POST response:\n{result}"
    assert result.origin_nums == [1], str(result)


async def test_a_post_answer_naming_another_url_is_not_kept_for_this_one(edge: EdgeUnderTest) -> None:
    """RFC 9110 §9.3.3: Content-Location must be the POST's own target."""
    steps = [{"headers": [FRESH, ["Content-Location", "/elsewhere"]], "body": "made by POST"}, {"headers": [FRESH], "body": "by GET"}]
    result = await edge.run_case(steps, [{"method": "POST", "body": "input"}, None])
    assert result[1].body == b"by GET" and result.origin_nums == [1, 2], str(result)
