"""Blocks on disk: append-only segment files, synced before a put is acknowledged,
loaded past damage, opened on demand, and compacted in the background.

Owns a node's block files. The record format and the reading of damaged segments
are `dht.records`; the key index and verification every read goes through are
`dht.blockstore.BlockStore`.

Durability (`fsync="always"`, the default): a put returns only once its record is
on stable storage. Concurrent puts share one fsync (`GroupCommit`): while one
fsync runs in a worker thread, the records appended meanwhile wait for the next,
which covers all of them. The directory is fsynced when a segment file is created
or removed, so the file itself survives a crash too. `fsync="never"` leaves it
to the kernel: for benchmarks and caches, where losing the last seconds of puts
on a power cut is acceptable.

Open files: a segment is opened when it is read, and at most `open_files` are
kept open (the least recently read is closed first); loading maps each segment
only while scanning it. So thousands of segments fit under a low file limit.

Compaction (`compact`): a sealed segment whose dead bytes pass a share of its
size has its live records copied to the segment being written, synced, and is
then deleted. A crash in between leaves a block in both files with the same
bytes (a block's key is its hash), and the later copy wins at load: nothing is
lost and nothing differs. A tombstone is copied forward while any older segment
remains, so that a deleted block cannot come back from it.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import trio

from . import records
from .blockstore import BlockStore
from .errors import ChordError
from .ids import IdSpace
from .merkle import MAX_BLOCK

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "never")
SUFFIX, LEGACY_SUFFIX = ".seg", ".blocks"  # record format versions 2 and 1
DEFAULT_OPEN_FILES = 64
COMPACT_DEAD_SHARE = 0.5  # a sealed segment at least this dead is rewritten
COPY_BATCH = 64  # records copied between checkpoints while compacting


class StoreError(ChordError):
    """The block directory cannot be read or written; the message names the file."""


def describe_os_error(exc: OSError, path: Path) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        reason += " (raise the open-file limit, or lower --open-files)"
    return f"{path}: {reason}"


class GroupCommit:
    """fsyncs shared by concurrent writers: `durable()` returns once everything
    written before it was called is synced by `sync` (run in a worker thread)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self.written = 0  # writes appended so far (the caller counts them)
        self._synced = 0
        self._running: trio.Event | None = None
        self.syncs = 0

    async def durable(self) -> None:
        wanted = self.written
        while self._synced < wanted:
            if self._running is not None:
                await self._running.wait()
                continue
            running = self._running = trio.Event()
            covers = self.written
            try:
                await trio.to_thread.run_sync(self._sync)
                self._synced = max(self._synced, covers)
                self.syncs += 1
            finally:
                self._running = None
                running.set()


class OpenFiles:
    """Read descriptors of segment files, opened on demand, at most `limit` at once."""

    def __init__(self, path_of: Callable[[int], Path], limit: int) -> None:
        if limit < 1:
            raise ValueError("open_files must be at least 1")
        self._path_of, self.limit = path_of, limit
        self._open: OrderedDict[int, int] = OrderedDict()

    def get(self, segment: int) -> int:
        fd = self._open.pop(segment, None)
        if fd is None:
            if len(self._open) >= self.limit:
                os.close(self._open.popitem(last=False)[1])
            path = self._path_of(segment)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise StoreError(f"cannot open a block segment: {describe_os_error(exc, path)}") from None
        self._open[segment] = fd
        return fd

    def forget(self, segment: int) -> None:
        fd = self._open.pop(segment, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


@dataclass
class LoadReport:
    """What loading the segments found: segments read, damaged records skipped, torn tails."""

    segments: int = 0
    damaged: int = 0
    torn_tails: int = 0


class _Location(NamedTuple):
    segment: int
    offset: int  # of the body
    length: int


class DiskBlockStore(BlockStore):
    """Blocks in segment files under a directory (see the module docstring).

    Why not diskcache: it gives every value over 32 KiB a directory, a file and a
    SQLite row, and writes the file a line at a time; measured here that is 0.7 to
    2 ms of CPU per 256 KiB block, which held puts to 40–75 MB/s. Appending costs
    about 0.06 ms and needs no worker thread (only fsync gets one)."""

    SEGMENT_LIMIT = 1 << 30

    def __init__(
        self, space: IdSpace, directory: str | Path, capacity: int | None = None, *,
        fsync: str = "always", open_files: int = DEFAULT_OPEN_FILES,
    ) -> None:
        super().__init__(space, capacity)
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.directory = Path(directory)
        self.fsync = fsync
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the block directory: {describe_os_error(exc, self.directory)}") from None
        self._locations: dict[bytes, _Location] = {}
        self._segment_bytes: dict[int, int] = {}  # segment -> its size in bytes
        self._tombstones: dict[int, list[bytes]] = {}  # segment -> keys deleted there
        self._versions: dict[int, int] = {}  # segment -> record format version (dht.records)
        self.files = OpenFiles(self._path, open_files)
        self.loaded = self._load()
        self._index.update(self._locations)
        self.used = sum(location.length for location in self._locations.values())
        self._segment = max(self._segment_bytes, default=0) + 1  # each start writes a new segment
        self._writer: int | None = None  # opened on the first write of this run
        self.commit = GroupCommit(self._sync_writer)

    def _path(self, segment: int) -> Path:
        suffix = LEGACY_SUFFIX if self._versions.get(segment) == 1 else SUFFIX
        return self.directory / f"{segment:06d}{suffix}"

    # -- loading -----------------------------------------------------------------------

    def _load(self) -> LoadReport:
        report = LoadReport()
        try:
            paths = [path for path in self.directory.iterdir() if path.suffix in (SUFFIX, LEGACY_SUFFIX) and path.stem.isdigit()]
        except OSError as exc:
            raise StoreError(f"cannot list the block directory: {describe_os_error(exc, self.directory)}") from None
        for path in sorted(paths, key=lambda path: int(path.stem)):
            segment = int(path.stem)
            if segment in self._versions:
                raise StoreError(f"{path}: segment {segment} exists in both formats; move one of them away")
            self._versions[segment] = 1 if path.suffix == LEGACY_SUFFIX else 2
            found = self._scan_file(segment)
            report.segments += 1
            report.damaged += found.damaged
            report.torn_tails += 1 if found.torn_tail else 0
            self._apply(segment, found.records)
        return report

    def _scan_file(self, segment: int) -> records.Scan:
        path = self._path(segment)
        try:
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                self._segment_bytes[segment] = size
                if size == 0:
                    return records.Scan()
                with mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    found = records.scan(mapped, MAX_BLOCK, self._versions[segment])
        except OSError as exc:
            raise StoreError(f"cannot read a block segment: {describe_os_error(exc, path)}") from None
        if found.damaged or found.torn_tail:
            log.warning("segment %s: skipped %d damaged record(s) (%d bytes) and a torn tail of %d bytes",
                        path, found.damaged, found.damaged_bytes, found.torn_tail)
        return found

    def _apply(self, segment: int, found: list[records.Record]) -> None:
        for record in found:
            if record.kind == records.PUT:
                self._locations[record.key] = _Location(segment, record.offset, record.length)
            else:
                self._locations.pop(record.key, None)
                self._tombstones.setdefault(segment, []).append(record.key)

    # -- writing ------------------------------------------------------------------------

    def _append(self, kind: int, key: bytes, data: bytes) -> _Location:
        """Write one record to the segment being written (a tombstone is also
        remembered there, for compaction) and return where its body lies."""
        written = self._segment_bytes.get(self._segment, 0)
        if self._writer is not None and written + records.record_size(len(data)) > self.SEGMENT_LIMIT:
            self._seal()
        if self._writer is None:
            self._writer = self._create_segment(self._segment)
        header = records.encode_header(kind, key, data)
        offset = self._segment_bytes[self._segment]
        try:
            _write_all(self._writer, header, data)
        except OSError as exc:
            raise StoreError(f"cannot write a block: {describe_os_error(exc, self._path(self._segment))}") from None
        self._segment_bytes[self._segment] = offset + len(header) + len(data)
        self.commit.written += 1
        if kind == records.DELETE:
            self._tombstones.setdefault(self._segment, []).append(key)
        return _Location(self._segment, offset + len(header), len(data))

    def _create_segment(self, segment: int) -> int:
        self._versions[segment] = 2
        path = self._path(segment)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create a block segment: {describe_os_error(exc, path)}") from None
        self._segment_bytes[segment] = os.fstat(fd).st_size
        if self.fsync == "always":
            self._sync_directory()
        return fd

    def _seal(self) -> None:
        """Finish the segment being written and move to a new one. It is synced
        whatever the policy (once a gigabyte): compaction relies on it."""
        assert self._writer is not None
        os.fsync(self._writer)
        os.close(self._writer)
        self._writer = None
        self._segment += 1

    def _sync_writer(self) -> None:
        """fsync the segment being written (in a worker thread). One sealed or closed
        meanwhile was synced before it was closed."""
        writer = self._writer
        if writer is None:
            return
        try:
            os.fsync(writer)
        except OSError as exc:
            if exc.errno != errno.EBADF or self._writer == writer:
                raise

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _durable(self) -> None:
        if self.fsync == "always":
            try:
                await self.commit.durable()
            except OSError as exc:
                raise StoreError(f"cannot sync a block segment: {describe_os_error(exc, self._path(self._segment))}") from None

    # -- BlockStore's back end ----------------------------------------------------------------

    def _stored_size(self, key: bytes) -> int:
        location = self._locations.get(key)
        return location.length if location else 0

    def _read(self, key: bytes) -> bytes | None:
        location = self._locations.get(key)
        if location is None:
            return None
        try:
            return os.pread(self.files.get(location.segment), location.length, location.offset)
        except OSError as exc:
            log.warning("cannot read block %s: %s", key.hex()[:16], describe_os_error(exc, self._path(location.segment)))
            return None

    async def _write(self, key: bytes, data: bytes) -> None:
        self._locations[key] = self._append(records.PUT, key, data)
        await self._durable()

    async def _erase(self, key: bytes) -> None:
        if self._locations.pop(key, None) is not None:
            self._append(records.DELETE, key, b"")
            await self._durable()

    # -- compaction ------------------------------------------------------------------------------

    def _live_by_segment(self) -> dict[int, list[bytes]]:
        by_segment: dict[int, list[bytes]] = {}
        for key, location in self._locations.items():
            by_segment.setdefault(location.segment, []).append(key)
        return by_segment

    def _dead_share(self, segment: int, keys: list[bytes]) -> float:
        """The share of a segment's bytes that none of its live blocks (`keys`) uses."""
        size = self._segment_bytes.get(segment, 0)
        if not size:
            return 0.0
        header = records.LEGACY_HEADER_SIZE if self._versions.get(segment) == 1 else records.HEADER_SIZE
        return 1.0 - sum(header + self._locations[key].length for key in keys) / size

    def disk_bytes(self) -> int:
        return sum(self._segment_bytes.values())

    async def compact(self, dead_share: float = COMPACT_DEAD_SHARE) -> int:
        """Rewrite every sealed segment at least `dead_share` dead; return the bytes
        given back. Reads and writes go on meanwhile (the copy yields every
        COPY_BATCH records)."""
        by_segment = self._live_by_segment()
        reclaimed = 0
        for segment in sorted(self._segment_bytes):
            keys = by_segment.get(segment, [])
            if segment != self._segment and self._dead_share(segment, keys) >= dead_share:
                reclaimed += await self._rewrite(segment, keys)
        return reclaimed

    async def _rewrite(self, segment: int, live: list[bytes]) -> int:
        """Copy `live` (the blocks in `segment`, as they were) forward, checked by
        hash so that compaction never gives a rotten copy a fresh checksum; then
        remove the segment."""
        older_remain = any(other < segment for other in self._segment_bytes)
        keep_deleted = [key for key in self._tombstones.get(segment, []) if key not in self._locations] if older_remain else []
        for count, key in enumerate(live):
            location = self._locations.get(key)
            if location is not None and location.segment == segment:  # not deleted nor rewritten meanwhile
                data = self.verified(key)
                if data is None:
                    self.corrupt_found += 1
                    await self.delete(key)
                else:
                    self._locations[key] = self._append(records.PUT, key, data)
            if count % COPY_BATCH == COPY_BATCH - 1:
                await trio.lowlevel.checkpoint()
        for key in keep_deleted:
            self._append(records.DELETE, key, b"")
        await trio.to_thread.run_sync(self._sync_writer)  # the copies are on disk before the original goes, whatever the policy
        path = self._path(segment)
        size = self._segment_bytes.pop(segment)
        self._versions.pop(segment, None)
        self._tombstones.pop(segment, None)
        self.files.forget(segment)
        try:
            os.unlink(path)
        except OSError as exc:
            raise StoreError(f"cannot remove a compacted segment: {describe_os_error(exc, path)}") from None
        if self.fsync == "always":
            self._sync_directory()
        log.info("compacted %s: %d live block(s) copied, %d bytes given back", path, len(live), size)
        return size

    def figures(self) -> dict[str, int]:
        return {**super().figures(), "disk": self.disk_bytes(), "damaged_records": self.loaded.damaged}

    def close(self) -> None:
        if self._writer is not None:
            if self.fsync == "always":
                os.fsync(self._writer)
            os.close(self._writer)
            self._writer = None
        self.files.close()


def _write_all(fd: int, header: bytes, data: bytes) -> None:
    """Append a record with one writev (no copy of the block to prepend its header),
    finishing a short write the way os.write would leave it."""
    written = os.writev(fd, [header, data])
    if written < len(header) + len(data):
        record = memoryview(header + data)
        while written < len(record):
            written += os.write(fd, record[written:])
