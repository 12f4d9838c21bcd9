"""The HTTP messages a handler sees and returns, apart from any connection.

Owns `Headers` (request fields, matched case-insensitively), `Request` (whose body
is a `RequestBody` that arrives as the handler reads it), `Response` (whose body is
bytes or an async iterable of bytes) and `simple_response` for short text answers.
No I/O happens here: a `RequestBody` asks its connection for more through the
`pull` function the connection gives it.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, KeysView
from urllib.parse import unquote

from .policy import first_value


class Headers:
    """Request header fields in arrival order; names are matched case-insensitively."""

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = [(name.lower(), value) for name, value in fields]
        self._index: dict[str, list[str]] = {}
        for name, value in self._fields:
            self._index.setdefault(name, []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """One field's value; repeated fields are joined with ", " (RFC 9110 §5.3)."""
        values = self._index.get(name.lower())
        if values is None:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def names(self) -> KeysView[str]:
        """The lower-cased names present (a set-like view, for quick membership tests)."""
        return self._index.keys()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class BodyError(Exception):
    """The request body could not be read to its end: the client left, sent it too
    slowly, sent too much, or broke its framing. The connection answers for it; a
    handler that meets this error has nothing to say to the client."""


class RequestBody:
    """A request body as it arrives. Chunks are taken in order; when none is
    waiting, the connection reads more from its client (and not before), so a body
    of any size holds at most one socket read in memory, and a slow reader slows
    the client down (back-pressure) instead of buffering it."""

    __slots__ = ("length", "received", "taken", "complete", "_chunks", "_pull")

    def __init__(self, length: int | None = 0, pull: Callable[[], Awaitable[None]] | None = None) -> None:
        self.length = length  # the declared Content-Length; None for a chunked body
        self.received = 0
        self.taken = False  # some of it has been handed to a reader
        self.complete = length == 0
        self._chunks: deque[bytes] = deque()
        self._pull = pull

    @classmethod
    def of(cls, data: bytes) -> RequestBody:
        """A body that is already whole (tests, internal requests)."""
        body = cls(len(data))
        if data:
            body.add(data)
            body.finish()
        return body

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        self.complete = True

    def attach(self, pull: Callable[[], Awaitable[None]]) -> None:
        self._pull = pull

    @property
    def empty(self) -> bool:
        return self.length == 0

    async def receive(self) -> bytes:
        """The next chunk, or b"" at the end. BodyError when it cannot be had."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._pull is None:
                raise BodyError("the request body was cut off")
            await self._pull()
        self.taken = True
        return self._chunks.popleft()

    async def read(self) -> bytes:
        """The whole body (for small bodies only: it is all held in memory)."""
        return b"".join([chunk async for chunk in self])

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.receive():
            yield chunk


@dataclass
class Request:
    method: str
    target: str
    headers: Headers
    body: RequestBody = field(default_factory=RequestBody)
    version: str = "1.1"
    client: str = ""
    # Sends an interim (1xx) response ahead of the final one, while the request is
    # being handled; None when the client cannot take one (HTTP/1.0).
    interim: Callable[[int, list[tuple[str, str]]], Awaitable[None]] | None = None

    @functools.cached_property
    def path(self) -> str:
        """The percent-decoded path, without the query."""
        return unquote(self.target.split("?", 1)[0])

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


Body = bytes | AsyncIterable[bytes]


@dataclass
class Response:
    """A response. Content-Length is added for a bytes body unless the handler set it
    (a HEAD answer sets the length of the body it leaves out); a streamed body with no
    Content-Length goes out chunked."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""

    def header(self, name: str) -> str | None:
        return first_value(self.headers, name)


Handler = Callable[[Request], Awaitable[Response]]


def simple_response(status: int, text: str = "", headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A short text/plain response, e.g. for errors."""
    body = (text or HTTPStatus(status).phrase).encode() + b"\n"
    return Response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], body)
