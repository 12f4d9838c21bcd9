"""HTTP caching conformance of a real `chordcdn edge` process, end to end.

Mirrors the harness of the http-tests/cache-tests suite (notes in
/work/notes/cache-tests-summary.md): a scripted origin (`scriptorigin`) keeps a
list of steps per case id and picks one by the `Req-Num` request header; every
answer carries the origin's own count of requests for the case
(`Server-Request-Count`). A response is judged as the suite judges it:

    hit        ⇔ Server-Request-Count < the client's request number
                 (or a 304 without Server-Request-Count)
    forwarded  ⇔ Server-Request-Count == the client's request number

so a case whose requests are all forwarded or all hits after the first needs no
other bookkeeping. Where a forward follows a hit, the test uses
`Client-Request-Count` (the Req-Num the origin answered) instead, as the suite's
stale-while-revalidate-window test does.

One edge process (and one origin, in a background thread) serves the whole
module; each test uses its own case id, so tests do not see each other's objects.
Every test names the RFC section it checks.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest
import trio

from .scriptorigin import ScriptOrigin, running_in_thread
from .test_cdn_e2e import start

PURGE_TOKEN = "s3cret"
STALE_WAIT = 1.5  # seconds after which a max-age=1 response is stale
FRESH = ["Cache-Control", "max-age=3600"]


# -- the edge under test -------------------------------------------------------------------


@dataclass
class Exchange:
    """One client request and the edge's answer."""

    num: int | None  # the Req-Num sent; None when none was
    method: str
    response: httpx.Response
    elapsed: float

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def body(self) -> bytes:
        return self.response.content

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def has(self, name: str) -> bool:
        return name in self.response.headers

    @property
    def served(self) -> int | None:
        """Server-Request-Count: which of the origin's answers this is."""
        value = self.header("server-request-count")
        return int(value) if value and value.isdigit() else None

    @property
    def answered_num(self) -> int | None:
        """Client-Request-Count: the Req-Num the origin answered."""
        value = self.header("client-request-count")
        return int(value) if value and value.isdigit() else None

    @property
    def hit(self) -> bool:
        if self.served is None:
            return self.status == 304
        return self.num is not None and self.served < self.num

    @property
    def forwarded(self) -> bool:
        return self.num is not None and self.served == self.num

    def __str__(self) -> str:
        fields = "; ".join(f"{k}: {v}" for k, v in self.response.headers.multi_items())
        return f"R{self.num} {self.method} → {self.status} [{fields}] body={self.body[:60]!r}"


@dataclass
class CaseResult:
    case_id: str
    exchanges: list[Exchange]
    state: list[dict[str, Any]]

    def __iter__(self) -> Iterator[Exchange]:
        return iter(self.exchanges)

    def __getitem__(self, index: int) -> Exchange:
        return self.exchanges[index]

    @property
    def origin_nums(self) -> list[int]:
        return [entry["request_num"] for entry in self.state]

    def __str__(self) -> str:
        seen = [f"{e['method']} {e['target']} #{e['request_num']} → {e.get('response_status')}" for e in self.state]
        return "\n".join([*(str(x) for x in self.exchanges), f"origin saw: {seen}"])


class Case:
    """A scripted case and an HTTP client to the edge; `send` one request at a time."""

    def __init__(self, edge: "EdgeUnderTest", steps: list[dict[str, Any]], case_id: str | None = None) -> None:
        self.edge = edge
        self.case_id = case_id or new_case_id()
        self.steps = steps
        self.exchanges: list[Exchange] = []

    async def __aenter__(self) -> "Case":
        self.edge.origin.script(self.case_id, self.steps)
        self.client = httpx.AsyncClient(base_url=self.edge.url, timeout=15)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()

    @property
    def path(self) -> str:
        return f"/test/{self.case_id}"

    async def send(
        self,
        num: int | None,
        method: str = "GET",
        headers: list[tuple[str, str]] | dict[str, str] = (),  # type: ignore[assignment]
        body: bytes | str | None = None,
        path: str = "",
        query: str = "",
    ) -> Exchange:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers)
        if num is not None:
            items.insert(0, ("Req-Num", str(num)))
        url = self.path + path + (f"?{query}" if query else "")
        started = time.monotonic()
        response = await self.client.request(method, url, headers=items, content=body)
        exchange = Exchange(num, method, response, time.monotonic() - started)
        self.exchanges.append(exchange)
        return exchange

    def state(self) -> list[dict[str, Any]]:
        return self.edge.origin.state(self.case_id)

    def result(self) -> CaseResult:
        result = CaseResult(self.case_id, list(self.exchanges), self.state())
        # The suite's retry detection: the origin must never see one client request twice.
        nums = result.origin_nums
        assert len(nums) == len(set(nums)), f"a client request reached the origin more than once (a retry):\n{result}"
        return result


@dataclass
class EdgeUnderTest:
    origin: ScriptOrigin
    process: trio.Process
    address: str
    purge_enabled: bool
    startup_note: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def case(self, steps: list[dict[str, Any]], case_id: str | None = None) -> Case:
        return Case(self, steps, case_id)

    async def run_case(
        self, steps: list[dict[str, Any]], requests: list[dict[str, Any] | None] | None = None, case_id: str | None = None
    ) -> CaseResult:
        """Script `steps`, send `requests` in order (default: one plain GET per
        step), numbered 1, 2, … in Req-Num; return the exchanges and the origin's
        record. A request is a dict of Case.send's arguments, plus `sleep_after`
        (seconds); None is a plain GET."""
        requests = requests if requests is not None else [None] * len(steps)
        async with self.case(steps, case_id) as case:
            for num, spec in enumerate(requests, 1):
                spec = dict(spec or {})
                sleep_after = spec.pop("sleep_after", 0)
                await case.send(spec.pop("num", num), **spec)
                if sleep_after:
                    await trio.sleep(sleep_after)
            return case.result()

    def alive(self) -> bool:
        return self.process.poll() is None

    async def assert_serving(self) -> None:
        """The edge still runs and serves a plain fresh response."""
        assert self.alive(), f"the edge exited with {self.process.returncode}"
        check = await self.run_case([{"headers": [FRESH]}])
        assert check[0].status == 200 and check[0].body == check.case_id.encode(), f"the edge no longer serves:\n{check}"


def new_case_id() -> str:
    return str(uuid.uuid4())


async def _serve_stack(*, task_status: trio.TaskStatus[EdgeUnderTest] = trio.TASK_STATUS_IGNORED) -> None:
    """The origin and one edge process in front of it, on the background loop."""
    origin = ScriptOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        common = ["edge", "--listen", "127.0.0.1:0", "--name", "e1", "--origin", origin.base_url]
        purge_enabled, note = True, ""
        try:
            process, address = await start(*common, "--purge-token", PURGE_TOKEN)
        except AssertionError as exc:  # an edge without --purge-token yet: run the rest anyway
            purge_enabled, note = False, f"`chordcdn edge --purge-token` did not start: {exc}"
            process, address = await start(*common)
        try:
            task_status.started(EdgeUnderTest(origin, process, address, purge_enabled, note))
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def edge() -> Iterator[EdgeUnderTest]:
    with running_in_thread(_serve_stack) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _edge_survives(edge: EdgeUnderTest) -> Iterator[None]:
    assert edge.alive(), f"the edge had exited (status {edge.process.returncode}) before this test"
    yield
    assert edge.alive(), f"the edge exited (status {edge.process.returncode}) during this test"


def assert_hit(exchange: Exchange, result: CaseResult | Case | None = None) -> None:
    assert exchange.hit, f"expected a cache hit, got Server-Request-Count={exchange.served}:\n{result or exchange}"


def assert_forwarded(exchange: Exchange, result: CaseResult | Case | None = None) -> None:
    assert exchange.forwarded, f"expected a forwarded request, got Server-Request-Count={exchange.served}:\n{result or exchange}"


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


# -- CDN-Cache-Control (RFC 9213) ----------------------------------------------------------


async def test_cdn_cache_control_overrides_cache_control(edge: EdgeUnderTest) -> None:
    """RFC 9213 §2.1-2.2: a CDN that honours CDN-Cache-Control uses it instead of
    Cache-Control: `no-store` there does not stop `CDN-Cache-Control: max-age=100`."""
    headers = [["Cache-Control", "no-store"], ["CDN-Cache-Control", "max-age=100"]]
    result = await edge.run_case([{"headers": headers}] * 2)
    assert_forwarded(result[0], result)
    assert_hit(result[1], result)


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


async def raw_exchange(address: str, request: bytes) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """Send one request with Connection: close on a raw socket; every response
    read back, 1xx included: (status, [(lower-case name, value)], body)."""
    host, port = address.rsplit(":", 1)
    data = b""
    with trio.fail_after(15):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(request)
            while chunk := await stream.receive_some(65536):
                data += chunk
    responses = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"truncated head: {head!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])]
        if 100 <= status < 200:
            responses.append((status, fields, b""))
            continue
        named = dict(fields)
        if "chunked" in named.get("transfer-encoding", ""):
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                body, data = body + data[:size], data[size + 2 :]
        elif "content-length" in named:
            body, data = data[: int(named["content-length"])], b""
        else:
            body, data = data, b""
        responses.append((status, fields, body))
        break
    return responses


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
