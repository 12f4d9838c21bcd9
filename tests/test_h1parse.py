"""The request parser alone: bytes in, requests and body chunks out, limits enforced
as bytes arrive. Every case is also fed one byte at a time."""

from __future__ import annotations

import pytest

from edge.h1parse import Limits, RequestError, RequestParser
from edge.messages import Request

LIMITS = Limits(max_target_bytes=64, max_header_bytes=256, max_body_bytes=100)


def feed(data: bytes, limits: Limits = LIMITS, one_by_one: bool = False) -> RequestParser:
    parser = RequestParser(limits)
    pieces = [data[i : i + 1] for i in range(len(data))] if one_by_one else [data]
    for piece in pieces:
        parser.feed(piece)
    return parser


def body_of(request: Request) -> bytes:
    chunks = []
    while request.body._chunks:
        chunks.append(request.body._chunks.popleft())
    return b"".join(chunks)


@pytest.fixture(params=[False, True], ids=["whole", "byte-by-byte"])
def one_by_one(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_a_request_is_ready_when_its_head_is_and_its_body_follows(one_by_one: bool) -> None:
    parser = feed(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab", one_by_one=one_by_one)
    [(request, keep_alive)] = parser.ready
    assert (request.method, request.target, keep_alive) == ("POST", "/up", True)
    assert request.body.length == 5 and not request.body.complete and parser.body_received == 2
    parser.feed(b"cde")
    assert request.body.complete and body_of(request) == b"abcde"


def test_trailer_fields_are_dropped_not_merged(one_by_one: bool) -> None:
    """RFC 9110 §6.5.1: trailer fields are not merged into the header section."""
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trail: 1\r\nHost: evil\r\n\r\n"
    [(request, _)] = feed(data, one_by_one=one_by_one).ready
    assert request.body.length is None and request.body.complete and body_of(request) == b"abc"
    assert "x-trail" not in request.headers and request.headers.get_all("host") == ["a"]


def test_trailers_count_against_the_header_limit() -> None:
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Big: " + b"x" * 300 + b"\r\n\r\n"
    with pytest.raises(RequestError) as caught:
        feed(data)
    assert caught.value.status == 431


def test_a_long_target_is_414_not_431(one_by_one: bool) -> None:
    with pytest.raises(RequestError) as caught:
        feed(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", one_by_one=one_by_one)
    assert caught.value.status == 414


def test_a_declared_body_too_large_is_413_at_the_head() -> None:
    with pytest.raises(RequestError) as caught:
        feed(b"PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n")
    assert caught.value.status == 413


def test_a_chunked_body_too_large_is_413_when_it_gets_there() -> None:
    parser = feed(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n" + b"a" * 50 + b"\r\n")
    with pytest.raises(RequestError) as caught:
        parser.feed(b"33\r\n" + b"b" * 51 + b"\r\n")
    assert caught.value.status == 413


def test_h2c_upgrade_is_ignored_and_the_body_and_next_request_parsed(one_by_one: bool) -> None:
    data = (
        b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    parser = feed(data, one_by_one=one_by_one)
    (first, _), (second, _) = parser.ready
    assert first.target == "/a" and first.body.complete and body_of(first) == b"abc"
    assert second.target == "/b" and second.method == "GET" and not parser.tunnel


def test_websocket_upgrade_without_body_is_an_ordinary_get() -> None:
    data = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /n HTTP/1.1\r\n\r\n"
    assert [request.target for request, _ in feed(data).ready] == ["/ws", "/n"]


def test_connect_is_parsed_and_what_follows_is_left_alone() -> None:
    parser = feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01junk")
    [(request, keep_alive)] = parser.ready
    assert request.method == "CONNECT" and not keep_alive and parser.tunnel
    parser.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert len(parser.ready) == 1


def test_pipelined_requests_come_out_in_order(one_by_one: bool) -> None:
    data = b"GET /1 HTTP/1.1\r\n\r\nPUT /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET /3 HTTP/1.1\r\n\r\n"
    parser = feed(data, one_by_one=one_by_one)
    assert [request.target for request, _ in parser.ready] == ["/1", "/2", "/3"]
    assert body_of(parser.ready[1][0]) == b"ok"


def test_extension_method_keeps_its_name() -> None:
    [(request, _)] = feed(b"FROB /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nz").ready
    assert request.method == "FROB" and body_of(request) == b"z"


def test_garbage_is_400() -> None:
    with pytest.raises(RequestError) as caught:
        feed(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert caught.value.status == 400
