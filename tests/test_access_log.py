"""The edge's access log (`edge/accesslog.py`): the line formats, escaping that no
value can get past, when the buffer is written (full, on a timer, at close, in
order, with back-pressure), what the handler wrapper records, and every request
logged by a real `chordcdn edge` process, through SIGTERM."""

from __future__ import annotations

import codecs
import gc
import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import AsyncIterator, Callable

import httpx
import pytest
import trio

from edge.accesslog import AccessLog, CountedBody, Sink, escape, json_lines, logged, running, text_lines, timestamp
from edge.messages import Headers, Request, Response

from .processes import CHORDCDN
from .test_cdn_e2e import start

TEXT_LINE = re.compile(
    r'(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<client>\S+) "(?P<method>(?:[^"\\ ]|\\.)*) (?P<target>(?:[^"\\]|\\.)*) '
    r'HTTP/(?P<version>[\d.]+)" (?P<status>\d+) (?P<sent>\d+) "(?P<cache>(?:[^"\\]|\\.)*)" (?P<micros>\d+) '
    r'"(?P<agent>(?:[^"\\]|\\.)*)"\n'
)  # fmt: skip
NOW = 1_700_000_000.007  # 2023-11-14T22:13:20.007Z
T = "2023-11-14T22:13:20.007Z"
NASTY = [
    '/a"b', "/back\\slash", "/new\nline", "/cr\rlf", "/esc\x1b[31m", "/del\x7f", "/latin\xff\xe9", "/sep\u2028x", "/nul\x00",
    '" 200 0 "-" 0.000001 "x"\n2026-01-01T00:00:00.000Z 6.6.6.6:1 "GET /forged HTTP/1.1',
]  # fmt: skip


def unescape(text: str) -> str:
    return codecs.decode(text.encode("ascii"), "unicode_escape")


def text_line(*values: object) -> str:
    return text_lines([(NOW, *values)])  # type: ignore[list-item]


def json_line(*values: object) -> str:
    return json_lines([(NOW, *values)])  # type: ignore[list-item]


def fields(line: str) -> dict[str, str]:
    match = TEXT_LINE.fullmatch(line)
    assert match, f"not an access-log line: {line!r}"
    return match.groupdict()


# -- the lines ------------------------------------------------------------------------------------


def test_text_line_has_every_field_in_order() -> None:
    line = text_line("127.0.0.1:5000", "GET", "/a.bin?x=1", "1.1", 200, 1024, "e1; hit; detail=memory", 1_234_567, "curl/8")
    assert line == T + ' 127.0.0.1:5000 "GET /a.bin?x=1 HTTP/1.1" 200 1024 "e1; hit; detail=memory" 1234567 "curl/8"\n'


def test_missing_values_are_dashes_and_json_nulls() -> None:
    line = text_line("", "GET", "/", "1.0", 0, 0, None, 5, None)
    assert line == T + ' - "GET / HTTP/1.0" 0 0 "-" 5 "-"\n'
    record = json.loads(json_line("", "GET", "/", "1.0", 0, 0, None, 5, None))
    assert record["cache"] is None and record["user_agent"] is None and record["duration_us"] == 5


def test_json_line_has_every_field() -> None:
    line = json_line("127.0.0.1:5000", "HEAD", "/a", "1.1", 304, 0, "e1; hit", 120, "ua")
    assert line.endswith("}\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": T, "client": "127.0.0.1:5000", "method": "HEAD", "target": "/a", "protocol": "HTTP/1.1",
        "status": 304, "bytes": 0, "cache": "e1; hit", "duration_us": 120, "user_agent": "ua",
    }  # fmt: skip


def test_timestamp_is_utc_iso_to_the_millisecond() -> None:
    assert timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1_700_000_000_007) == T
    rows = [(NOW + delay, "c", "GET", "/", "1.1", 200, 0, None, 1, None) for delay in (0, 0.0004, 0.0015)]
    assert [line[:24] for line in text_lines(rows).splitlines()] == [T, T, "2023-11-14T22:13:20.008Z"]


@pytest.mark.parametrize("value", NASTY)
def test_no_value_forges_or_breaks_a_text_line(value: str) -> None:
    line = text_line("1.2.3.4:5", "GET", value, "1.1", 200, 1, value, 1, value)
    assert line.endswith("\n") and line.count("\n") == 1 and line.isascii() and line[:-1].isprintable()
    parsed = fields(line)
    assert unescape(parsed["target"]) == value and unescape(parsed["cache"]) == value and unescape(parsed["agent"]) == value


@pytest.mark.parametrize("value", NASTY)
def test_no_value_forges_or_breaks_a_json_line(value: str) -> None:
    line = json_line("1.2.3.4:5", value, value, "1.1", 200, 1, value, 1, value)
    assert line.count("\n") == 1 and line.isascii() and line[:-1].isprintable()
    record = json.loads(line)
    assert record["method"] == record["target"] == record["cache"] == record["user_agent"] == value


def test_escape_leaves_plain_text_alone() -> None:
    plain = "Mozilla/5.0 (X11; Linux x86_64) e1; hit; detail=memory /a/b?c=d&e=%22"
    assert escape(plain) is plain
    assert escape('a"b\\c\td\xffe\U0001f600') == 'a\\"b\\\\c\\x09d\\xffe\\U0001f600'


# -- the buffer -----------------------------------------------------------------------------------


class ListStream:
    """A text stream that keeps what each write got; writes can be held at a gate."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = fail
        self.closed = False

    def write(self, text: str) -> int:
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    @property
    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


def record(access: AccessLog, number: int, agent: str = "ua") -> None:
    access.record("127.0.0.1:1", "GET", f"/{number}", "1.1", 200, 10, "e1; hit", 7, agent)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream), buffer_lines=20, interval=3600)  # type: ignore[arg-type]
    async with running(access):
        record(access, 0)
        await trio.sleep(0.2)
        assert stream.writes == []  # below the buffer size, before the interval
        number = 1
        while not access._full.is_set():
            record(access, number)
            number += 1
        await wait_until(lambda: len(stream.lines) == number)
        assert len(stream.writes) == 1


async def test_a_line_is_written_within_the_interval() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream), interval=0.3)  # type: ignore[arg-type]
    async with running(access):
        await trio.sleep(0.1)
        started = trio.current_time()
        record(access, 1)
        await wait_until(lambda: len(stream.lines) == 1)
        assert trio.current_time() - started <= 0.3 + 0.5  # the interval, plus a loaded machine's slack


async def test_close_writes_everything_left_in_order_and_closes_the_sink() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream, owned=True), buffer_lines=100_000, interval=3600)  # type: ignore[arg-type]
    async with running(access):
        for number in range(5000):
            record(access, number)
        assert stream.writes == []
    assert [fields(line + "\n")["target"] for line in stream.lines] == [f"/{n}" for n in range(5000)]
    assert stream.closed
    record(access, 5000)  # after the close, a line is written at once
    assert stream.lines[-1].endswith('"ua"') and "/5000 " in stream.lines[-1]


async def test_a_writer_far_behind_holds_the_recorders_back_and_loses_nothing() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream), buffer_lines=10, interval=0.05, most_pending=30)  # type: ignore[arg-type]
    async with running(access):
        stream.gate.clear()
        record(access, 0)
        await wait_until(stream.entered.is_set)  # the writer is stuck on the first batch
        number = 1
        while not access.backlogged:
            record(access, number)
            number += 1
        with trio.move_on_after(0.3) as waited:
            await access.wait_for_room()
        assert waited.cancelled_caught
        stream.gate.set()
        with trio.fail_after(5):
            await access.wait_for_room()
    assert [fields(line + "\n")["target"] for line in stream.lines] == [f"/{n}" for n in range(number)]


async def test_a_regular_file_is_written_from_the_event_loop_and_a_pipe_from_a_thread(tmp_path: Path) -> None:
    with open(tmp_path / "log", "a") as file:
        assert not Sink(file).may_block  # type: ignore[arg-type]
        access = AccessLog(Sink(file), interval=0.05)  # type: ignore[arg-type]
        async with running(access):
            record(access, 1)
            await wait_until(lambda: (tmp_path / "log").read_text().count("\n") == 1)
    assert Sink(ListStream()).may_block  # type: ignore[arg-type]
    read, write = os.pipe()
    with os.fdopen(read) as reader, os.fdopen(write, "w") as writer:
        assert Sink(writer).may_block and reader


async def test_a_sink_that_fails_costs_its_lines_not_the_edge(caplog: pytest.LogCaptureFixture) -> None:
    stream = ListStream(fail=True)
    access = AccessLog(Sink(stream), interval=0.05)  # type: ignore[arg-type]
    async with running(access):
        record(access, 1)
        await wait_until(lambda: access.lost == 1)
        record(access, 2)
    assert access.lost == 2 and "could not be written" in caplog.text


# -- the handler wrapper --------------------------------------------------------------------------


def request(method: str = "GET", target: str = "/a.bin", agent: str | None = "tester") -> Request:
    headers = Headers([("User-Agent", agent)] if agent is not None else [])
    return Request(method, target, headers, client="10.0.0.1:1234")


def logged_lines(stream: ListStream, access: AccessLog) -> list[dict[str, str]]:
    access.close()
    return [fields(line + "\n") for line in stream.lines]


async def test_answers_with_bytes_bodies_record_the_body_bytes_sent() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream))  # type: ignore[arg-type]
    answers = {"/a": Response(200, [("Cache-Status", "e1; hit; detail=memory")], b"x" * 1024), "/n": Response(304, [], b"")}
    handle = logged(lambda req: _answer(answers[req.target]), access)
    await handle(request("GET", "/a"))
    await handle(request("HEAD", "/a", agent=None))
    await handle(request("GET", "/n"))
    lines = logged_lines(stream, access)
    assert [(line["method"], line["status"], line["sent"], line["cache"], line["agent"]) for line in lines] == [
        ("GET", "200", "1024", "e1; hit; detail=memory", "tester"),
        ("HEAD", "200", "0", "e1; hit; detail=memory", "-"),
        ("GET", "304", "0", "-", "tester"),
    ]
    assert all(line["client"] == "10.0.0.1:1234" for line in lines)


async def _answer(response: Response) -> Response:
    return response


async def chunks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * 1000


async def test_a_streamed_body_is_recorded_when_it_ends_with_what_was_taken() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream))  # type: ignore[arg-type]
    handle = logged(lambda req: _answer(Response(200, [], chunks(5))), access)
    response = await handle(request())
    assert isinstance(response.body, CountedBody) and access._pending == []
    taken = 0
    async for chunk in response.body:
        taken += len(chunk)
        if taken == 3000:
            break  # the client went away after three chunks
    await response.body.aclose()
    await response.body.aclose()  # recorded once only
    [line] = logged_lines(stream, access)
    assert line["status"] == "200" and line["sent"] == "3000"


async def test_a_streamed_body_dropped_unclosed_is_still_recorded() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream))  # type: ignore[arg-type]
    handle = logged(lambda req: _answer(Response(200, [], chunks(1))), access)
    response = await handle(request())
    del response
    gc.collect()
    [line] = logged_lines(stream, access)
    assert line["sent"] == "0"


async def test_a_failed_handler_is_recorded_as_the_500_the_server_sends() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream))  # type: ignore[arg-type]

    async def broken(req: Request) -> Response:
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await logged(broken, access)(request())
    [line] = logged_lines(stream, access)
    assert line["status"] == "500" and int(line["sent"]) > 0


async def test_a_cancelled_handler_is_recorded_with_status_0() -> None:
    stream = ListStream()
    access = AccessLog(Sink(stream))  # type: ignore[arg-type]

    async def slow(req: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError

    with trio.move_on_after(0.05):
        await logged(slow, access)(request())
    [line] = logged_lines(stream, access)
    assert line["status"] == "0" and int(line["micros"]) >= 40_000


# -- a real `chordcdn edge` process ---------------------------------------------------------------


READY = re.compile(rb"listening on (127\.0\.0\.1:\d+)")


async def start_edge(tmp_path: Path, origin: str, *flags: str, before: tuple[str, ...] = ()) -> tuple[trio.Process, str]:
    """`chordcdn BEFORE edge ... FLAGS`, its stdout and stderr in tmp_path/edge.out
    and edge.err."""
    argv = [CHORDCDN, *before, "edge", "--listen", "127.0.0.1:0", "--name", "e1", "--origin", f"http://{origin}", *flags]
    with open(tmp_path / "edge.out", "wb") as out, open(tmp_path / "edge.err", "wb") as err:
        process = await trio.lowlevel.open_process(argv, stdout=out, stderr=err)
    with trio.fail_after(20):
        while not (ready := READY.search((tmp_path / "edge.out").read_bytes())):
            assert process.poll() is None, f"the edge exited: {(tmp_path / 'edge.err').read_text()}"
            await trio.sleep(0.05)
    return process, ready.group(1).decode()


async def stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(15):
        assert await process.wait() == 0


async def origin_with_file(tmp_path: Path) -> tuple[trio.Process, str, bytes]:
    body = b"z" * 1024
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.bin").write_bytes(body)
    process, address = await start("origin", "--root", str(tmp_path / "site"), "--listen", "127.0.0.1:0")
    return process, address, body


async def load(address: str, body: bytes, clients: int, each: int) -> set[str]:
    """clients × each GETs of /a.bin over keep-alive connections, each with its own
    User-Agent; returns the User-Agents sent."""
    sent: set[str] = set()
    async with httpx.AsyncClient(base_url=f"http://{address}", limits=httpx.Limits(max_connections=clients), timeout=30) as client:

        async def one_client(number: int) -> None:
            for index in range(each):
                agent = f"load-{number}-{index}"
                response = await client.get("/a.bin", headers={"User-Agent": agent})
                assert response.status_code == 200 and response.content == body
                sent.add(agent)

        async with trio.open_nursery() as nursery:
            for number in range(clients):
                nursery.start_soon(one_client, number)
    return sent


async def test_every_request_is_on_stderr_by_default_through_sigterm(tmp_path: Path) -> None:
    origin, origin_address, body = await origin_with_file(tmp_path)
    try:
        edge, address = await start_edge(tmp_path, origin_address)
        try:
            agents = await load(address, body, clients=8, each=150)
        finally:
            await stop(edge)  # at once: most lines are still in the buffer
        err = (tmp_path / "edge.err").read_text()
        lines = [fields(line + "\n") for line in err.splitlines() if TEXT_LINE.match(line + "\n")]
        assert "SIGTERM received" in err
        assert sorted(line["agent"] for line in lines) == sorted(agents)
        assert {(line["method"], line["target"], line["status"], line["sent"]) for line in lines} == {("GET", "/a.bin", "200", "1024")}
        assert sum("hit; detail=memory" in line["cache"] for line in lines) >= len(lines) - 8
    finally:
        origin.kill()


async def test_a_json_file_log_is_written_while_serving_and_escapes_what_clients_send(tmp_path: Path) -> None:
    origin, origin_address, _ = await origin_with_file(tmp_path)
    log_file = tmp_path / "access.jsonl"
    try:
        json_log = ("--access-log", str(log_file), "--access-log-format", "json")
        edge, address = await start_edge(tmp_path, origin_address, *json_log, before=("--log-level", "WARNING"))
        try:
            host, port = address.split(":")
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(host, int(port))
                async with stream:
                    await stream.send_all(b'GET /a.bin?q="x"\\ HTTP/1.1\r\nHost: e\r\nUser-Agent: evil" 200 \xff\r\nConnection: close\r\n\r\n')
                    while await stream.receive_some(65536):
                        pass
            await wait_until(lambda: log_file.exists() and log_file.read_bytes().endswith(b"\n"), timeout=3)  # the timer, not the close
        finally:
            await stop(edge)
        [record] = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert record["target"] == '/a.bin?q="x"\\' and record["user_agent"] == 'evil" 200 \xff' and record["status"] == 200
    finally:
        origin.kill()


async def test_off_and_warning_log_nothing_and_a_bad_path_is_a_usage_error(tmp_path: Path) -> None:
    bad = await trio.run_process(
        [CHORDCDN, "edge", "--listen", "127.0.0.1:0", "--name", "e", "--origin", "http://127.0.0.1:9", "--access-log", str(tmp_path / "no" / "x")],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and b"--access-log" in bad.stderr
    origin, origin_address, body = await origin_with_file(tmp_path)
    try:
        for before, flags in ((("--log-level", "WARNING"), ()), ((), ("--access-log", "off"))):
            edge, address = await start_edge(tmp_path, origin_address, *flags, before=before)
            try:
                await load(address, body, clients=1, each=3)
            finally:
                await stop(edge)
            err = (tmp_path / "edge.err").read_text() + (tmp_path / "edge.out").read_text()
            assert "a.bin" not in err, flags
    finally:
        origin.kill()
