"""One body arriving from upstream, read by any number of clients as it arrives.

Owns request collapsing's shared buffer. The fetch task writes chunks; every
waiting response reads from its own offset and waits when it catches up. Bytes go
to an unnamed temporary file, so a large body is never held whole in memory and a
slow reader costs disk, not RAM. The file is append-only and all access happens on
the trio thread, so plain positioned reads and writes are safe; it closes when the
last reference (the fetch, or a reader still sending) goes.
"""

from __future__ import annotations

import os
import tempfile
from typing import AsyncIterator

import trio

READ_CHUNK = 256 * 1024


class UpstreamFailed(Exception):
    """The fetch feeding a spool stopped before the body was complete."""


class Spool:
    def __init__(self, directory: str | None = None) -> None:
        self._fd = os.open(directory or tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
        self.size = 0
        self.complete = False
        self.error: BaseException | None = None
        self._grew = trio.Event()

    def write(self, chunk: bytes) -> None:
        os.pwrite(self._fd, chunk, self.size)
        self.size += len(chunk)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """The body is complete, or (with `error`) will never be."""
        self.complete = error is None
        self.error = error
        self._wake()

    @property
    def done(self) -> bool:
        return self.complete or self.error is not None

    async def wait_done(self) -> None:
        while not self.done:
            await self._grew.wait()

    def _wake(self) -> None:
        self._grew.set()
        self._grew = trio.Event()

    def read_all(self) -> bytes:
        """The whole body, once complete (for putting it in the memory tier)."""
        return os.pread(self._fd, self.size, 0)

    def fileno(self) -> int:
        return self._fd

    async def reader(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) as they arrive; raises UpstreamFailed if the fetch dies."""
        offset = start
        while end is None or offset < end:
            if offset < self.size:
                stop = self.size if end is None else min(end, self.size)
                chunk = os.pread(self._fd, min(READ_CHUNK, stop - offset), offset)
                offset += len(chunk)
                yield chunk
                continue
            if self.error is not None:
                raise UpstreamFailed(f"upstream failed after {self.size} bytes: {self.error}")
            if self.complete:
                return
            await self._grew.wait()

    def __del__(self) -> None:
        # Readers hold the spool through their frames, so this runs after the last.
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
