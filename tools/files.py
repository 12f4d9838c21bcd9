"""`chordcdn put` and `chordcdn get`: files to and from the ring over TCP.

Owns the client side of the command line: opening the file, the progress bar
(rich, on stderr, only on a terminal) and parsing byte ranges.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from dht.client import DhtClient
from dht.merkle import DEFAULT_CHUNK
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials

PROGRESS_THRESHOLD = 8 * 1024 * 1024


def parse_range(text: str) -> tuple[int, int | None]:
    """"A-B" (inclusive, as in HTTP), "A-" (to the end) → (start, end exclusive or None)."""
    first, sep, last = text.partition("-")
    if not sep or not first.isdigit() or (last and not last.isdigit()):
        raise ValueError(f"range {text!r} is not START-END or START-")
    start, end = int(first), (int(last) + 1 if last else None)
    if end is not None and end <= start:
        raise ValueError(f"range {text!r} ends before it starts")
    return start, end


@contextmanager
def progress_bar(label: str, total: int | None, show: bool) -> Iterator[Callable[[int], None]]:
    """A callback advancing a transfer bar on stderr (a no-op when not shown)."""
    if not show or not sys.stderr.isatty():
        yield lambda count: None
        return
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda count: progress.advance(task, count)


async def put_file(path: str, via: str, tls: TlsCredentials | None, chunk_size: int = DEFAULT_CHUNK, quorum: int | None = None) -> str:
    size = os.path.getsize(path)
    async with open_tcp_transport(None, tls=tls) as transport:
        client = await DhtClient.via(transport, via, write_quorum=quorum)
        with open(path, "rb") as source, progress_bar("put", size, size >= PROGRESS_THRESHOLD) as advance:
            return await client.put_file(source, chunk_size, progress=advance)


async def get_file(
    cid: str, via: str, tls: TlsCredentials | None, target: BinaryIO, to_file: bool, start: int = 0, end: int | None = None
) -> int:
    async with open_tcp_transport(None, tls=tls) as transport:
        client = await DhtClient.via(transport, via)
        root = await client.stat(cid)
        end = root.size if end is None else min(end, root.size)
        with progress_bar("get", end - start, to_file and end - start >= PROGRESS_THRESHOLD) as advance:

            async def sink(data: bytes) -> None:
                target.write(data)
                advance(len(data))

            return await client.read(cid, sink, start, end)


__all__ = ["get_file", "parse_range", "put_file"]
