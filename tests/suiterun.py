"""Runs http-tests/cache-tests style test configs through the edge and judges
them as that suite's client and server do (notes: /work/notes/cache-tests-summary.md
§1). Not collected by pytest (no `test_` prefix); test_cache_suite_mirror.py holds
the cases.

A test is `{"id": ..., "requests": [config, ...], "real_pause": bool}`; a request
config uses the suite's own keys: request_method, request_headers, request_body,
query_arg, filename, magic_ims, response_status, response_headers ([name, value] or
[name, value, False] for "not saved"; an integer value of a date header is a
delta in seconds), response_body, response_pause, disconnect, interim_responses,
pause_after, expected_type, expected_status, expected_response_headers (a name,
[name, value], [name, ">", n], [name, "=", other]),
expected_response_headers_missing, expected_request_headers(_missing),
expected_interim_responses, expected_response_text, check_body, setup,
setup_tests.

`pause_after` (3 s) is honoured with a real sleep only when the test says
`real_pause`; otherwise `shift_pauses` ages the stored responses by moving
their Date, Expires and Last-Modified back by the pauses that follow them
(see its docstring for when that is the same test).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from .edgecase import EdgeUnderTest, new_case_id, raw_exchange
from .scriptorigin import http_date

PAUSE = 3  # seconds: the suite's pause_after
DATE_NAMES = frozenset({"date", "expires", "last-modified", "if-modified-since", "if-unmodified-since"})
SHIFTED = frozenset({"date", "expires", "last-modified"})  # response date headers the origin fixes up
CLIENT_TIMEOUT = 10.0

Config = dict[str, Any]


def merge(template: Config, overrides: Config) -> Config:
    """The suite's template merge: lists are concatenated, other values replaced."""
    merged = copy.deepcopy(template)
    for key, value in overrides.items():
        merged[key] = merged[key] + list(value) if isinstance(value, list) and isinstance(merged.get(key), list) else value
    return merged


def shift_pauses(requests: list[Config]) -> list[Config]:
    """The test without sleeps: each response is made older on arrival by the
    pauses that follow its request (Date, Expires and Last-Modified deltas minus
    3 s per pause; a `Date` is added where the origin would send the current one).

    Expires − Date and Date − Last-Modified are kept, so freshness lifetimes and
    heuristics are unchanged, and current_age at the next request is the same 3 s
    per pause, now as apparent_age instead of resident time. That is the same test
    when the stored response carries no valid Age above 0 (max(apparent_age, Age)
    absorbs the shift: other-age-update-* take `real_pause`), or its Age settles
    the verdict either way (Age 7200 against max-age=3600, 3600 against 10000),
    and nothing between a
    response and its pause depends on the response still being young (that too
    takes `real_pause`, e.g. cc-resp-must-revalidate-stale). Expected headers with
    date deltas would need shifting too, so such tests must take `real_pause`.
    Literal (non-delta) Expires and Last-Modified values stay: in the required
    tests they are invalid dates, dates decades away, or a validator, whose
    meaning a 3 s shift of Date does not change."""
    shifted = copy.deepcopy(requests)
    pauses_after = [sum(1 for later in shifted[index:] if later.get("pause_after")) for index in range(len(shifted))]
    for config, pauses in zip(shifted, pauses_after):
        if not pauses:
            continue
        headers = config.setdefault("response_headers", [])
        if not any(item[0].lower() == "date" for item in headers):
            headers.append(["Date", 0, False])
        for item in headers:
            if item[0].lower() in SHIFTED and isinstance(item[1], int):
                item[1] -= PAUSE * pauses
            elif item[0].lower() == "date":
                raise ValueError(f"cannot shift the literal Date {item[1]!r}; use real_pause")
        config.pop("pause_after", None)
    for config in shifted:
        for expected in config.get("expected_response_headers", []):
            if isinstance(expected, list) and expected[0].lower() in DATE_NAMES and isinstance(expected[1], int):
                raise ValueError(f"expected {expected} depends on the pause; use real_pause")
    return shifted


def origin_step(config: Config) -> dict[str, Any]:
    """A request config as a scriptorigin step (the suite server's behaviour)."""
    headers = [[item[0], item[1]] for item in config.get("response_headers", [])]
    step: dict[str, Any] = {"headers": headers}
    if "response_status" in config:
        step["status"], step["reason"] = config["response_status"][0], config["response_status"][1]
    if config.get("response_body") is not None:
        step["body"] = config["response_body"]
    if str(config.get("expected_type", "")).endswith("validated"):
        step["validated"] = "etag" if config["expected_type"] == "etag_validated" else "lm"
    if config.get("response_pause"):
        step["pause"] = config["response_pause"]
    if config.get("disconnect"):
        step["disconnect"] = True
    if config.get("interim_responses"):
        step["interim"] = [[item[0], item[1] if len(item) > 1 else []] for item in config["interim_responses"]]
    if any(name.lower() == "transfer-encoding" for name, _ in headers):
        step["close_delimited"] = True  # Node sends no Content-Length then, and closes
    return step


@dataclass
class Got:
    """A response as the suite's client sees it: names lower-case, repeats joined."""

    status: int
    header_list: list[tuple[str, str]]
    body: bytes
    interim: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.header_list if k == name.lower()]
        return ", ".join(values) if values else None

    def __str__(self) -> str:
        shown = "; ".join(f"{k}: {v}" for k, v in self.header_list if k not in ("server-now", "request-numbers"))
        interim = f" after {[s for s, _ in self.interim]}" if self.interim else ""
        return f"{self.status}{interim} [{shown}] body={self.body[:40]!r}"


@dataclass
class Outcome:
    test_id: str
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (request number, level, message)
    transcript: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, num: int, level: str, message: str) -> None:
        self.failures.append((num, level, message))

    def diagnosis(self) -> str:
        failed = "; ".join(f"R{num} [{level}] {message}" for num, level, message in self.failures)
        return f"{self.test_id}: {failed}"

    def details(self) -> str:
        return "\n".join([self.diagnosis(), *(f"    {line}" for line in self.transcript)])


def level_of(config: Config, check: str) -> str:
    return "setup" if config.get("setup") or check in config.get("setup_tests", []) else "assertion"


def request_headers(test: Config, config: Config, num: int, previous: Got | None) -> list[tuple[str, str]]:
    """The client's headers: the fetch "dirty hack" first, combined with the test's
    own (a Headers object joins repeats with ", "), then the test's identity."""
    combined: dict[str, tuple[str, list[str]]] = {"pragma": ("Pragma", ["foo"]), "cache-control": ("Cache-Control", ["nothing-to-see-here"])}
    for name, value in config.get("request_headers", []):
        if config.get("magic_ims") and name.lower() == "if-modified-since" and isinstance(value, int):
            now = int(previous.get("server-now") or 0) / 1000 if previous else 0
            value = http_date(now + value)
        combined.setdefault(name.lower(), (name, []))[1].append(str(value))
    headers = [(name, ", ".join(values)) for name, values in combined.values()]
    headers += [("Accept-Language", "*"), ("Sec-Fetch-Mode", "cors")]  # as undici sends
    return headers + [("Test-Name", test["id"]), ("Test-ID", test["id"]), ("Req-Num", str(num))]


async def fetch(client: httpx.AsyncClient, edge: EdgeUnderTest, config: Config, url: str, headers: list[tuple[str, str]]) -> Got:
    method = config.get("request_method", "GET")
    body = config.get("request_body")
    if config.get("expected_interim_responses"):  # httpx hides 1xx: read the exchange raw
        lines = [f"{method} {url} HTTP/1.1", f"Host: {edge.address}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
        if body is not None:
            lines.append(f"Content-Length: {len(body.encode())}")
        raw = ("\r\n".join(lines) + "\r\n\r\n" + (body or "")).encode("latin-1")
        responses = await raw_exchange(edge.address, raw)
        final = responses[-1]
        return Got(final[0], final[1], final[2], [(s, f) for s, f, _ in responses[:-1]])
    async with client.stream(method, url, headers=headers, content=body) as response:
        raw_body = b"".join([chunk async for chunk in response.aiter_raw()])
        return Got(response.status_code, [(k.lower(), v) for k, v in response.headers.multi_items()], raw_body)


def fixup(name: str, value: Any, got: Got) -> str:
    if name.lower() in DATE_NAMES and isinstance(value, int) and not isinstance(value, bool):
        return http_date(int(got.get("server-now") or 0) / 1000 + value)
    return str(value)


def parse_int(text: str | None) -> int | None:
    digits = ""
    for char in (text or "").strip():
        if not (char.isdigit() or (char in "+-" and not digits)):
            break
        digits += char
    try:
        return int(digits)
    except ValueError:
        return None


def client_checks(outcome: Outcome, config: Config, num: int, got: Got, case_uuid: str) -> None:
    """The checks test.mjs makes on each response, in its order."""
    numbers = (got.get("request-numbers") or "").split()
    if len(numbers) != len(set(numbers)):
        outcome.fail(num, "setup", f"retry: the origin saw Request-Numbers {numbers}")
    expected_type = config.get("expected_type")
    served = parse_int(got.get("server-request-count"))
    if expected_type == "cached" and not ((served is not None and served < num) or (got.status == 304 and served is None)):
        outcome.fail(num, level_of(config, "expected_type"), f"expected cached, got Server-Request-Count {served} (status {got.status})")
    if expected_type == "not_cached" and served != num:
        outcome.fail(num, level_of(config, "expected_type"), f"expected not_cached, got Server-Request-Count {served}")
    if "expected_status" in config:
        if config["expected_status"] is not None and got.status != config["expected_status"]:
            outcome.fail(num, level_of(config, "expected_status"), f"status {got.status}, expected {config['expected_status']}")
    elif "response_status" in config:
        if got.status != config["response_status"][0]:
            outcome.fail(num, "setup", f"status {got.status}, expected {config['response_status'][0]}")
    elif got.status == 999:
        outcome.fail(num, level_of(config, "expected_type"), "the origin sent 999: the request should have been conditional")
    elif got.status != 200:
        outcome.fail(num, "setup", f"status {got.status}, expected 200")
    for expected in config.get("expected_response_headers", []):
        level = level_of(config, "expected_response_headers")
        if isinstance(expected, str):
            if got.get(expected) is None:
                outcome.fail(num, level, f"response header {expected} missing")
        elif len(expected) == 3 and expected[1] == ">":
            value = parse_int(got.get(expected[0]))
            if value is None or not value > expected[2]:
                outcome.fail(num, level, f"{expected[0]}: {got.get(expected[0])!r}, expected > {expected[2]}")
        elif len(expected) == 3 and expected[1] == "=":
            if got.get(expected[0]) != got.get(expected[2]):
                outcome.fail(num, level, f"{expected[0]} {got.get(expected[0])!r} != {expected[2]} {got.get(expected[2])!r}")
        elif got.get(expected[0]) != fixup(expected[0], expected[1], got):
            outcome.fail(num, level, f"{expected[0]}: {got.get(expected[0])!r}, expected {fixup(expected[0], expected[1], got)!r}")
    for missing in config.get("expected_response_headers_missing", []):
        if isinstance(missing, str) and got.get(missing) is not None:  # the [name, value] form checks nothing in the suite
            outcome.fail(num, level_of(config, "expected_response_headers_missing"), f"header {missing} present: {got.get(missing)!r}")
    for index, (status, names) in enumerate(config.get("expected_interim_responses", [])):
        level = level_of(config, "expected_interim_responses")
        if index >= len(got.interim) or got.interim[index][0] != status:
            outcome.fail(num, level, f"interim response #{index + 1} should be {status}; got {[s for s, _ in got.interim]}")
            continue
        present = {k for k, _ in got.interim[index][1]}
        for name, *_ in names:
            if name.lower() not in present:
                outcome.fail(num, level, f"interim {status} lacks {name}: {got.interim[index][1]}")
    if config.get("check_body", True) is not False:
        if "expected_response_text" in config:
            if config["expected_response_text"] is not None and got.body.decode("latin-1") != config["expected_response_text"]:
                outcome.fail(num, level_of(config, "expected_response_text"), f"body {got.body[:40]!r}, expected {config['expected_response_text']!r}")
        elif config.get("response_body") is not None:
            if got.body.decode("latin-1") != config["response_body"]:
                outcome.fail(num, "setup", f"body {got.body[:40]!r}, expected {config['response_body']!r}")
        elif got.status not in (204, 304) and config.get("request_method", "GET") != "HEAD" and got.body != case_uuid.encode():
            outcome.fail(num, "setup", f"body {got.body[:40]!r}, expected the uuid")


def server_checks(outcome: Outcome, requests: list[Config], responses: list[Got | None], state: list[dict[str, Any]]) -> None:
    """The checks run against the origin's record (/state) afterwards."""
    entries = iter(state)
    for num, config in enumerate(requests, 1):
        if config.get("expected_type") == "cached":
            continue
        entry = next(entries, None)
        expected_type = config.get("expected_type")
        if entry is None:  # fine unless a check needs the origin's record of this request
            if expected_type or "expected_request_headers" in config or "expected_request_headers_missing" in config:
                level = "assertion" if expected_type == "not_cached" else level_of(config, "expected_type")  # (a TypeError there)
                outcome.fail(num, level, "the origin saw no request for it")
            continue
        seen = entry["headers"]
        if expected_type == "not_cached" and entry["request_num"] != num:
            outcome.fail(num, level_of(config, "expected_type"), f"origin request #{entry['request_num']} where #{num} was expected")
        for kind, header in (("etag_validated", "if-none-match"), ("lm_validated", "if-modified-since")):
            if expected_type == kind and header not in seen:
                outcome.fail(num, level_of(config, "expected_type"), f"upstream request lacks {header}: {seen}")
        for expected in config.get("expected_request_headers", []):
            name = expected if isinstance(expected, str) else expected[0]
            if name.lower() not in seen or (not isinstance(expected, str) and seen[name.lower()] != str(expected[1])):
                outcome.fail(num, level_of(config, "expected_request_headers"), f"upstream {name}: {seen.get(name.lower())!r}, expected {expected}")
        for missing in config.get("expected_request_headers_missing", []):
            name = missing if isinstance(missing, str) else missing[0]
            if name.lower() in seen and (isinstance(missing, str) or seen[name.lower()] == str(missing[1])):
                outcome.fail(num, level_of(config, "expected_request_headers_missing"), f"upstream {name}: {seen[name.lower()]!r} must not be sent")
        got = responses[num - 1] if num - 1 < len(responses) else None
        if got is not None and entry.get("response_headers") is not None:
            saved_headers_echoed(outcome, num, requests[entry["request_num"] - 1], entry, got)


def saved_headers_echoed(outcome: Outcome, num: int, answered: Config, entry: dict[str, Any], got: Got) -> None:
    """Every response header the origin sent for `answered` and saved (not `False`)
    must reach the client unchanged (repeats joined), Date excepted."""
    sent = [(k.lower(), v) for k, v in entry["response_headers"]]
    expected: dict[str, list[str]] = {}
    for name, value, *flag in answered.get("response_headers", []):
        key = name.lower()
        if key == "date" or flag == [False]:
            continue
        if key in SHIFTED and isinstance(value, int):
            index = len(expected.get(key, []))
            value = [v for k, v in sent if k == key][index]
        expected.setdefault(key, []).append(str(value))
    for key, values in expected.items():
        if got.get(key) != ", ".join(values):
            outcome.fail(num, "setup", f"response header {key}: {got.get(key)!r}, the origin sent {', '.join(values)!r}")


async def run_test(edge: EdgeUnderTest, test: Config, limiter: trio.CapacityLimiter) -> Outcome:
    """One suite test, start to end; never raises for the edge's misbehaviour."""
    async with limiter:
        outcome = Outcome(test["id"])
        requests = test["requests"] if test.get("real_pause") else shift_pauses(test["requests"])
        case_uuid = new_case_id()
        responses: list[Got | None] = []
        async with httpx.AsyncClient(base_url=edge.url, timeout=CLIENT_TIMEOUT, follow_redirects=False) as client:
            try:
                put = await client.put(f"/config/{case_uuid}", content=json.dumps([origin_step(c) for c in requests]), headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                outcome.fail(0, "setup", f"PUT /config failed: {exc!r}")
                return outcome
            if put.status_code != 201:
                outcome.fail(0, "setup", f"PUT /config through the edge: {put.status_code}")
                return outcome
            for num, config in enumerate(requests, 1):
                url = f"/test/{case_uuid}" + (f"/{config['filename']}" if config.get("filename") else "") + (f"?{config['query_arg']}" if config.get("query_arg") else "")
                headers = request_headers(test, config, num, responses[-1] if responses else None)
                try:
                    with trio.fail_after(CLIENT_TIMEOUT + 2):
                        got = await fetch(client, edge, config, url, headers)
                except (httpx.HTTPError, OSError, trio.TooSlowError, AssertionError, ValueError, IndexError) as exc:
                    outcome.fail(num, "assertion", f"the request failed: {type(exc).__name__}: {exc}")
                    outcome.transcript.append(f"R{num} {config.get('request_method', 'GET')} → {type(exc).__name__}")
                    break
                responses.append(got)
                outcome.transcript.append(f"R{num} {config.get('request_method', 'GET')} → {got}")
                client_checks(outcome, config, num, got, case_uuid)
                if config.get("pause_after"):
                    await trio.sleep(PAUSE)
            else:
                try:
                    state_response = await client.get(f"/state/{case_uuid}")
                    state = [] if state_response.status_code == 404 else state_response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    outcome.fail(0, "setup", f"GET /state failed: {exc!r}")
                    return outcome
                outcome.transcript.append("origin saw: " + ", ".join(f"#{e['request_num']} {e['method']} → {e.get('response_status')}" for e in state))
                server_checks(outcome, requests, responses, state)
        return outcome
