"""HTTP/1.1 requests from bytes: llhttp (httptools) callbacks and the limits on what
a client may send, with no I/O.

Owns turning received bytes into `Request`s: a request is handed out as soon as its
head is complete, and its body follows chunk by chunk into its `RequestBody` as more
bytes are fed (so a handler can stream it on). Enforced as bytes arrive: the size of
the request target (414) and of the header block and trailer section (431), and of
the body (413, at the head when Content-Length declares too much). Trailer fields
are counted and dropped, never merged into the header fields (RFC 9110 §6.5.1).
Extension methods that llhttp does not know are parsed under a stand-in and given
back their own name. Protocol upgrades are not taken: `Upgrade` on an ordinary
request is ignored and the request answered over HTTP/1.1 (as nginx does), body and
all; after `CONNECT` nothing more is parsed, since what follows is tunnel data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

from .messages import Headers, Request, RequestBody


@dataclass(frozen=True)
class Limits:
    """What a client may send and how long it may take. Sizes in bytes, times in
    seconds, rates in bytes per second."""

    max_target_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    header_timeout: float = 10.0  # from a request's first byte to the end of its head
    idle_timeout: float = 60.0  # a keep-alive connection waiting for its next request
    body_timeout: float = 10.0  # grace for a request body, on top of its minimum rate
    min_body_rate: float = 1024.0  # a body must keep up this rate (after the grace)
    send_timeout: float = 30.0  # longest a client may take no byte of a response
    max_connections: int | None = None  # None: three quarters of the open-file limit


class RequestError(Exception):
    """The client broke the protocol or a limit: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _ExtensionMethod(Exception):
    """llhttp did not know the request's method."""


_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


class RequestParser:
    """Feed it bytes; complete request heads appear in `ready` as (request,
    keep_alive) pairs, and bodies fill in behind them as bytes arrive."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[tuple[Request, bool]] = []
        self.in_headers = False  # between a message's first byte and the end of its head
        self.tunnel = False  # a CONNECT was parsed: what follows is not HTTP
        self._open_message = False  # between a message's first byte and its end
        self._method: str | None = None  # an extension method llhttp could not take
        self._body: RequestBody | None = None  # the body being received
        self._resumed: RequestBody | None = None  # an ignored upgrade's body, parsed after it
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        self._header_bytes = 0

    @property
    def body_received(self) -> int:
        """Bytes received so far of the body being received (0 between bodies)."""
        body = self._body or self._resumed
        return body.received if body is not None else 0

    def feed(self, data: bytes) -> None:
        if self.tunnel:
            return
        fresh, completed = not self._open_message, len(self.ready)
        try:
            self._feed(data)
        except _ExtensionMethod:
            if not fresh or len(self.ready) != completed:
                raise RequestError(400, "an extension method must start a read of its own") from None
            self._feed_extension_method(data)

    def _feed_extension_method(self, data: bytes) -> None:
        """llhttp knows only registered methods; any other token is a valid method
        (RFC 9110 §9.1) that a proxy passes on. Parse the request under a stand-in
        method and give it back its own."""
        method, space, rest = data.partition(b" ")
        if not space or not _TOKEN.fullmatch(method):
            raise RequestError(400, f"malformed request method {method[:40]!r}")
        self.parser = httptools.HttpRequestParser(self)  # the old one stopped at the error
        self._method = method.decode("ascii")
        try:
            self._feed(b"PUT " + rest)
        except _ExtensionMethod:
            raise RequestError(400, "malformed request after an extension method") from None

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            raise _ExtensionMethod() from None
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data[upgrade.args[0] :] if upgrade.args else b"")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, RequestError):
                raise exc.__context__ from None
            raise RequestError(400, f"malformed request: {exc}") from None

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stops at a request that asks to switch protocols. After CONNECT,
        stop for good; otherwise carry on as if `Upgrade` were absent: parse the
        request's body (llhttp left it unparsed) and whatever follows."""
        request = self.ready[-1][0]
        if request.method == "CONNECT":
            self.tunnel = True
            self.ready[-1] = (request, False)
            return
        self.parser = httptools.HttpRequestParser(self)
        if self._resumed is None:
            self._feed(rest)
            return
        framing = [f"{name}: {value}\r\n" for name, value in request.headers.items() if name in ("content-length", "transfer-encoding")]
        self._feed(("PUT / HTTP/1.1\r\n" + "".join(framing) + "\r\n").encode("latin-1") + rest)

    def _count_header_bytes(self, amount: int) -> None:
        self._header_bytes += amount
        if self._header_bytes > self.limits.max_header_bytes:
            raise RequestError(431, f"request header block exceeds {self.limits.max_header_bytes} bytes")

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._open_message = True
        self._reset()
        self.in_headers = self._resumed is None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_target_bytes:
            raise RequestError(414, f"request target longer than {self.limits.max_target_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        if self.in_headers:  # else a trailer field: counted, then dropped
            self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self._resumed is not None:  # the stand-in head of an ignored upgrade's body
            self._body, self._resumed = self._resumed, None
            return
        parser = self.parser
        method, self._method = self._method or parser.get_method().decode("ascii", "replace"), None
        headers = Headers(self._fields)
        self._body = RequestBody(self._declared_length(headers))
        request = Request(method, self._url.decode("latin-1"), headers, self._body, parser.get_http_version())
        self.ready.append((request, parser.should_keep_alive()))

    def _declared_length(self, headers: Headers) -> int | None:
        """The body's length from its head: None when chunked (llhttp has already
        refused conflicting or malformed framing)."""
        if "transfer-encoding" in headers:
            return None
        length = int(headers.get("content-length") or 0)
        if length > self.limits.max_body_bytes:
            raise RequestError(413, f"request body of {length} bytes exceeds {self.limits.max_body_bytes}")
        return length

    def on_body(self, chunk: bytes) -> None:
        body = self._body
        assert body is not None
        if body.received + len(chunk) > self.limits.max_body_bytes:
            raise RequestError(413, f"request body exceeds {self.limits.max_body_bytes} bytes")
        body.add(chunk)

    def on_message_complete(self) -> None:
        self._open_message = False
        body, self._body = self._body, None
        assert body is not None
        if self.parser.should_upgrade() and body.length != 0 and self.ready[-1][0].method != "CONNECT":
            self._resumed = body  # llhttp skipped the body of an upgrade request
            return
        body.finish()
