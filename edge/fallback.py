"""Finishing a body that the ring cannot finish.

Owns the origin as a source of single leaves: when no replica returns a leaf of a
file intact, the DHT client asks an `OriginLeaves` for that leaf's byte range, and
uses the answer only if it hashes to the leaf's key (so a wrong or changed origin
file cannot slip into a response). The request is a Range request conditioned on
the file's CID (`If-Match: "<cid>"`, the origin's ETag), so the origin answers 206
only while it still serves that version; anything but an exact 206 is refused.
"""

from __future__ import annotations

import logging
import re
from typing import AsyncIterator, Callable

from dht.errors import ChordError

from .client import ClientError, HttpClient
from .policy import first_value

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d{1,20})-(\d{1,20})/(\d{1,20}|\*)")


class LeafUnavailable(ChordError):
    """The origin did not give the leaf's exact bytes."""


class OriginLeaves:
    """Leaves of the file `cid` from `url` at the origin, by Range, on If-Match."""

    def __init__(self, client: HttpClient, url: str, cid: str, fields: list[tuple[str, str]], on_used: Callable[[], None] | None = None) -> None:
        self.client = client
        self.url = url
        self.cid = cid
        self.fields = [(name, value) for name, value in fields if name.lower() not in ("range", "if-match", "if-range")]
        self.on_used = on_used

    async def __call__(self, offset: int, size: int) -> bytes:
        last = offset + size - 1
        fields = [*self.fields, ("Range", f"bytes={offset}-{last}"), ("If-Match", f'"{self.cid}"')]
        try:
            response = await self.client.request("GET", self.url, fields)
        except ClientError as exc:
            raise LeafUnavailable(f"the origin could not be asked for bytes {offset}-{last}: {exc}") from None
        try:
            _check_answer(response.status, first_value(response.headers, "content-range"), offset, last)
            data = await _read_at_most(response.chunks(), size)
        except ClientError as exc:
            raise LeafUnavailable(f"the origin's answer for bytes {offset}-{last} broke off: {exc}") from None
        finally:
            await response.close()
        if len(data) != size:
            raise LeafUnavailable(f"the origin sent {len(data)} bytes for a leaf of {size}")
        log.info("leaf at %d (%d bytes) of %s… taken from the origin", offset, size, self.cid[:16])
        if self.on_used is not None:
            self.on_used()
        return data


def _check_answer(status: int, content_range: str | None, first: int, last: int) -> None:
    if status != 206:
        raise LeafUnavailable(f"the origin answered {status} to a Range request on the CID, not 206")
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match is None or (int(match[1]), int(match[2])) != (first, last):
        raise LeafUnavailable(f"the origin's Content-Range {(content_range or '')[:80]!r} is not bytes {first}-{last}")


async def _read_at_most(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, but no more than one byte past `limit` (more is refused anyway)."""
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            break
    return bytes(data)
