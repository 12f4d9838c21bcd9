"""Shared harness for the end-to-end cache tests (not collected: no `test_` prefix).

Mirrors the harness of the http-tests/cache-tests suite (notes in
/work/notes/cache-tests-summary.md): a scripted origin (`scriptorigin`) keeps a
list of steps per case id and picks one by the `Req-Num` request header; every
answer carries the origin's own count of requests for the case
(`Server-Request-Count`). A response is judged as the suite judges it:

    hit        ⇔ Server-Request-Count < the client's request number
                 (or a 304 without Server-Request-Count)
    forwarded  ⇔ Server-Request-Count == the client's request number

so a case whose requests are all forwarded or all hits after the first needs no
other bookkeeping. Where a forward follows a hit, a test uses
`Client-Request-Count` (the Req-Num the origin answered) instead, as the suite's
stale-while-revalidate-window test does.

The fixtures live in conftest.py: `edge_stack` (module scope) runs one edge
process (and one origin, in a background thread) per test module that uses it;
`edge` hands it to a test and checks that the process outlives the test.

Each case uses its own case id, so cases do not see each other's objects.
"""

from __future__ import annotations

import signal
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
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


@contextmanager
def edge_process() -> Iterator[EdgeUnderTest]:
    """A scripted origin and one `chordcdn edge` in front of it, served from a
    background thread's trio loop until the block ends (for sync, e.g.
    module-scoped, fixtures: see `edge_stack` and `edge` in conftest.py)."""
    with running_in_thread(_serve_stack) as stack:
        yield stack


def assert_alive(edge: EdgeUnderTest, when: str) -> None:
    assert edge.alive(), f"the edge exited (status {edge.process.returncode}) {when}"


def assert_hit(exchange: Exchange, result: CaseResult | Case | None = None) -> None:
    assert exchange.hit, f"expected a cache hit, got Server-Request-Count={exchange.served}:\n{result or exchange}"


def assert_forwarded(exchange: Exchange, result: CaseResult | Case | None = None) -> None:
    assert exchange.forwarded, f"expected a forwarded request, got Server-Request-Count={exchange.served}:\n{result or exchange}"


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
