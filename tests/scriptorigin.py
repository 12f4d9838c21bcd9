"""A scripted HTTP/1.1 origin for cache tests, in the manner of the test server
of the http-tests/cache-tests suite (see /work/notes/cache-tests-summary.md §1.3).

A test scripts a *case*: a list of steps, one per client request it will make,
keyed by a case id. A request to `/test/<id>[/anything][?query]` picks its step by
its `Req-Num` header (1-based; the origin's own count for the id when the header
is missing), is recorded, and is answered as the step says. Every answer carries
`Server-Request-Count` (requests this origin has seen for the id, this one
included) and `Client-Request-Count` (the Req-Num), so a client can tell a cache
hit (Server-Request-Count < its request number) from a forwarded request (equal).

Requests are parsed with h11, which takes any token as a method (M-SEARCH, FROB);
responses are written as raw bytes, so a step can do what a well-behaved server
would not: any status (599, 999), repeated header names, a Content-Length shorter
than the body, a close-delimited body under a bogus Transfer-Encoding, interim
1xx responses, a pause, or a dropped connection.

A step is a JSON-like dict; every key is optional:

    status            int, default 200 (any integer, e.g. 599)
    reason            reason phrase; default from the status
    headers           [[name, value], ...]; repeats allowed. An *integer* value of
                      Date, Expires or Last-Modified means now + that many seconds,
                      written as an IMF-fixdate.
    body              str or bytes, default the case id; none for 204/304 and HEAD
    validated         "etag" or "lm": answer 304 (with this step's headers) when the
                      request's If-None-Match equals the previous step's ETag exactly
                      ("lm": If-Modified-Since equals its Last-Modified), else 999
    pause             seconds to wait before answering
    disconnect        true: record the request, then close without answering
    interim           [[status, [[name, value], ...]], ...] 1xx sent first
    raw_content_length  send this Content-Length but write the whole body, then close
    close_delimited   true: no Content-Length; the body ends when the connection closes

Scripting: `origin.script(id, steps)` in Python, or `PUT /config/<id>` with the
JSON list as body (201; 409 if the id is already configured). State: `GET
/state/<id>` (JSON list of recorded requests; 404 when the id is unknown) or
`origin.state(id)`. Each record: request_num, method, target, headers (a dict,
names lower-cased, repeats joined with ", "), header_list ([[name, value], ...] in
order), body (text, latin-1), and, once answered, response_status and
response_headers.

`running_origin()` runs one in a background thread with its own trio loop, for
sync (e.g. module-scoped) fixtures.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import h11
import trio

Step = dict[str, Any]
DATE_HEADERS = frozenset({"date", "expires", "last-modified"})
READ_SIZE = 65536


def http_date(timestamp: float) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7)."""
    return formatdate(timestamp, usegmt=True)


def fix_headers(headers: list[list[Any]], now: float) -> list[tuple[str, str]]:
    """A step's headers as sent: integer date deltas become dates."""
    fixed = []
    for name, value in headers:
        if name.lower() in DATE_HEADERS and isinstance(value, int) and not isinstance(value, bool):
            value = http_date(now + value)
        fixed.append((str(name), str(value)))
    return fixed


def reason_of(status: int) -> str:
    if status == 999:
        return "304 Not Generated"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class ScriptOrigin:
    """Scripted cases and what was asked of them. `script`, `state` and `port` may
    be used from any thread; `serve` runs on a trio loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cases: dict[str, list[Step]] = {}
        self._requests: dict[str, list[dict[str, Any]]] = {}
        self._sent: dict[str, dict[int, list[tuple[str, str]]]] = {}  # id → step number → headers sent
        self.port = 0

    # -- the Python API ------------------------------------------------------------

    def script(self, case_id: str, steps: list[Step]) -> None:
        """Configure (or replace) a case."""
        with self._lock:
            self._cases[case_id] = [dict(step) for step in steps]
            self._requests.setdefault(case_id, [])

    def state(self, case_id: str) -> list[dict[str, Any]]:
        """The requests recorded for a case, oldest first (a copy)."""
        with self._lock:
            return json.loads(json.dumps(self._requests.get(case_id, [])))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- serving -------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `nursery.start(origin.serve)` returns the port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)

    async def _connection(self, stream: trio.SocketStream) -> None:
        """Requests one after another on a connection (keep-alive) until either
        side closes. A fresh h11 parser reads each request, so that h11 never has
        to approve of the hand-written responses; bytes it has not consumed carry
        over to the next request's parser."""
        leftover, closed = b"", False
        try:
            async with stream:
                while True:
                    parsed = await self._read_request(stream, leftover, closed)
                    if parsed is None:
                        return
                    request, body, leftover, closed = parsed
                    keep_alive = await self._answer(stream, request, body)
                    if not keep_alive or closed:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _read_request(
        self, stream: trio.SocketStream, leftover: bytes, closed: bool
    ) -> tuple[h11.Request, bytes, bytes, bool] | None:
        conn = h11.Connection(h11.SERVER)
        if leftover:
            conn.receive_data(leftover)
        if closed:  # (receive_data(b"") means end of stream to h11)
            conn.receive_data(b"")
        request: h11.Request | None = None
        body: list[bytes] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await stream.send_all(_raw_response(400, [("Content-Type", "text/plain"), ("Connection", "close")], f"bad request: {exc}\n".encode()))
                return None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_SIZE)
                conn.receive_data(data)  # b"" tells h11 the client closed
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                rest, rest_closed = conn.trailing_data
                return request, b"".join(body), bytes(rest), rest_closed
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _answer(self, stream: trio.SocketStream, request: h11.Request, body: bytes) -> bool:
        """Answer one request; whether the connection may carry another."""
        method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        header_list = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers]
        keep_alive = _wants_keep_alive(request, header_list)
        path = unquote(urlsplit(target).path)
        segments = path.split("/")  # "", "test", id, ...
        kind = segments[1] if len(segments) > 1 else ""
        case_id = segments[2] if len(segments) > 2 else ""
        close = [] if keep_alive else [("Connection", "close")]

        if kind == "config" and case_id:
            if method != "PUT":
                status, text = 405, "PUT a JSON list of steps\n"
            else:
                try:
                    steps = json.loads(body)
                    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
                        raise ValueError("not a list of objects")
                except ValueError as exc:
                    status, text = 400, f"bad config: {exc}\n"
                else:
                    with self._lock:
                        exists = case_id in self._cases
                        if not exists:
                            self._cases[case_id] = steps
                            self._requests.setdefault(case_id, [])
                    status, text = (409, "already configured\n") if exists else (201, "OK")
            await stream.send_all(_raw_response(status, [("Content-Type", "text/plain"), *close], text.encode()))
            return keep_alive

        if kind == "state" and case_id and method == "GET":
            with self._lock:
                known = case_id in self._cases or case_id in self._requests
                payload = json.dumps(self._requests.get(case_id, [])).encode()
            status = 200 if known else 404
            await stream.send_all(_raw_response(status, [("Content-Type", "application/json"), *close], payload if known else b"[]"))
            return keep_alive

        if kind != "test" or not case_id:
            await stream.send_all(_raw_response(404, [("Content-Type", "text/plain"), *close], b"no such path\n"))
            return keep_alive

        with self._lock:
            steps = self._cases.get(case_id)
            if steps is None:
                record = None
            else:
                records = self._requests.setdefault(case_id, [])
                count = len(records) + 1
                req_num_text = next((v for k, v in header_list if k == "req-num"), None)
                req_num = int(req_num_text) if req_num_text and req_num_text.strip().isdigit() else count
                record = {
                    "request_num": req_num,
                    "method": method,
                    "target": target,
                    "headers": _joined(header_list),
                    "header_list": [list(pair) for pair in header_list],
                    "body": body.decode("latin-1"),
                }
                records.append(record)
                numbers = " ".join(str(r["request_num"]) for r in records)
        if record is None:
            await stream.send_all(_raw_response(409, [("Content-Type", "text/plain"), *close], b"case not configured\n"))
            return keep_alive
        if not 1 <= req_num <= len(steps):
            self._note(record, response_status=409)
            await stream.send_all(_raw_response(409, [("Content-Type", "text/plain"), *close], f"no step {req_num}\n".encode()))
            return keep_alive
        step = steps[req_num - 1]

        if step.get("pause"):
            await trio.sleep(float(step["pause"]))
        if step.get("disconnect"):
            self._note(record, response_status=None, disconnected=True)
            return False

        now = time.time()
        status = int(step.get("status", 200))
        step_headers = fix_headers(step.get("headers", []), now)
        validated = step.get("validated")
        if validated:
            status = 304 if self._validates(case_id, steps, req_num, validated, header_list, now) else 999
        with self._lock:
            self._sent.setdefault(case_id, {})[req_num] = step_headers

        headers = [
            ("Server-Request-Count", str(count)),
            ("Client-Request-Count", str(req_num_text if req_num_text is not None else req_num)),
            ("Server-Now", str(int(now * 1000))),
            *step_headers,
        ]
        names = {name.lower() for name, _ in step_headers}
        if "content-type" not in names:
            headers.append(("Content-Type", "text/plain"))
        if "date" not in names:
            headers.append(("Date", http_date(now)))
        headers.append(("Request-Numbers", numbers))

        raw_body = step.get("body", case_id)
        content = raw_body.encode("utf-8") if isinstance(raw_body, str) else bytes(raw_body)
        no_body = status in (204, 304) or 100 <= status < 200
        if no_body:
            content = b""

        self._note(record, response_status=status, response_headers=[list(pair) for pair in headers])

        for interim in step.get("interim", []):
            interim_status, interim_headers = int(interim[0]), (interim[1] if len(interim) > 1 else [])
            await stream.send_all(_head(interim_status, [(str(k), str(v)) for k, v in interim_headers]))

        if step.get("close_delimited"):
            if "connection" not in names:
                headers.append(("Connection", "close"))
            await stream.send_all(_head(status, headers, step.get("reason")) + (b"" if method == "HEAD" else content))
            return False
        if step.get("raw_content_length") is not None:
            headers.append(("Content-Length", str(int(step["raw_content_length"]))))
            await stream.send_all(_head(status, headers, step.get("reason")) + (b"" if method == "HEAD" else content))
            return False  # the framing is a lie: this connection cannot carry another
        if not (no_body or "content-length" in names):
            headers.append(("Content-Length", str(len(content))))
        headers += close
        await stream.send_all(_head(status, headers, step.get("reason")) + (b"" if method == "HEAD" else content))
        return keep_alive

    def _note(self, record: dict[str, Any], **answer: Any) -> None:
        with self._lock:  # `state` may be copying records on another thread
            record.update(answer)

    def _validates(self, case_id: str, steps: list[Step], req_num: int, kind: str, header_list: list[tuple[str, str]], now: float) -> bool:
        """Does the request carry the previous step's validator, exactly? The value
        compared is what was sent for that step when it was answered (so date deltas
        compare as sent), else the step's configured value."""
        if req_num < 2:
            return False
        with self._lock:
            sent = self._sent.get(case_id, {}).get(req_num - 1)
        previous = sent if sent is not None else fix_headers(steps[req_num - 2].get("headers", []), now)
        request_name, response_name = ("if-none-match", "etag") if kind == "etag" else ("if-modified-since", "last-modified")
        expected = next((v for k, v in previous if k.lower() == response_name), None)
        got = [v for k, v in header_list if k == request_name]
        return expected is not None and len(got) == 1 and got[0] == expected


def _joined(header_list: list[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in header_list:
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


def _wants_keep_alive(request: h11.Request, header_list: list[tuple[str, str]]) -> bool:
    tokens = {t.strip().lower() for k, v in header_list if k == "connection" for t in v.split(",")}
    if request.http_version == b"1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _head(status: int, headers: list[tuple[str, str]], reason: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason if reason is not None else reason_of(status)}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _raw_response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    return _head(status, [("Date", http_date(time.time())), *headers, ("Content-Length", str(len(body)))]) + body


@contextmanager
def running_origin() -> Iterator[ScriptOrigin]:
    """A ScriptOrigin serving on 127.0.0.1 (a free port) from a background thread
    with its own trio loop, until the block ends."""
    origin = ScriptOrigin()
    with running_in_thread(origin.serve):
        yield origin


@contextmanager
def running_in_thread(serve: Any) -> Iterator[Any]:
    """Run `await nursery.start(serve)` on a trio loop in a daemon thread; yield
    what it started with, and cancel it when the block ends."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            box["scope"], box["token"] = nursery.cancel_scope, trio.lowlevel.current_trio_token()
            try:
                box["value"] = await nursery.start(serve)
            finally:
                started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the starting thread
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="trio-background", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise RuntimeError("the background trio loop did not start in time")
    try:
        yield box["value"]
    finally:
        try:
            trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        except trio.RunFinishedError:
            pass
        thread.join(30)
        if "error" in box:
            raise box["error"]
