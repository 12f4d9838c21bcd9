"""The record format of block segment files, and finding the records in a segment.

Owns the on-disk shape of one record and the rules for reading damaged segments.
Pure: it encodes headers and scans a bytes-like object (the caller maps the file),
doing no I/O of its own.

A record is a header and a body. Version 2 (magic `CDN2`, in `*.seg` files):
magic, kind (put or delete), the 32-byte key, the body's length, the CRC-32 of
the body, and the CRC-32 of all the header before it. Version 1 (magic `CDNB`, in
`*.blocks` files written before checksums) has magic, kind, key and length only;
such segments are still read, and their bodies are verified by hash on every
read as all bodies are. A segment holds one version only, so damage cannot make
a record of one version pass for the other.

A damaged record costs that record and no other, as in LevelDB's log reader:
- a body whose checksum fails is skipped by the length its intact header gives;
- a header whose checksum fails says nothing trustworthy about where the record
  ends, so the scan resynchronises on the next offset that holds a valid header;
- bytes at the end that cannot hold a whole record (a write torn by a crash) are
  a torn tail. Each is counted.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass, field
from typing import Union

MAGIC = b"CDN2"
LEGACY_MAGIC = b"CDNB"
PUT, DELETE = 1, 2
KINDS = (PUT, DELETE)
_PREFIX = struct.Struct(">4sB32sII")  # magic, kind, key, length, body CRC
_CHECK = struct.Struct(">I")  # CRC of the prefix
HEADER_SIZE = _PREFIX.size + _CHECK.size  # 49 bytes
_LEGACY = struct.Struct(">4sB32sI")  # magic, kind, key, length
LEGACY_HEADER_SIZE = _LEGACY.size  # 41 bytes
Segment = Union[bytes, mmap.mmap]  # a segment's bytes: anything with find() and the buffer protocol


@dataclass(frozen=True, slots=True)
class Record:
    """One record found in a segment: `offset` is where its body starts."""

    kind: int
    key: bytes
    offset: int
    length: int
    start: int  # where its header starts

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class Scan:
    """What a scan of one segment found."""

    records: list[Record] = field(default_factory=list)
    damaged: int = 0  # records skipped for a failed checksum or an unreadable header
    damaged_bytes: int = 0
    torn_tail: int = 0  # bytes at the end too short to be a whole record


def encode_header(kind: int, key: bytes, body: bytes | memoryview) -> bytes:
    """The version 2 header for a record of `kind` with `key` and `body`."""
    prefix = _PREFIX.pack(MAGIC, kind, key, len(body), zlib.crc32(body))
    return prefix + _CHECK.pack(zlib.crc32(prefix))


def record_size(body_length: int) -> int:
    return HEADER_SIZE + body_length


def scan(data: Segment, max_body: int, version: int = 2) -> Scan:
    """Every intact record of a segment's bytes, in order, skipping damage."""
    if version not in (1, 2):
        raise ValueError("segment versions are 1 and 2")
    magic = MAGIC if version == 2 else LEGACY_MAGIC
    found = Scan()
    view = memoryview(data)
    try:
        _scan_into(found, data, view, max_body, magic)
    finally:
        view.release()
    return found


def _scan_into(found: Scan, data: Segment, view: memoryview, max_body: int, magic: bytes) -> None:
    offset, size = 0, len(view)
    while offset < size:
        record, body_ok = _record_at(view, offset, max_body, magic)
        if record is not None and record.end <= size:
            if body_ok:
                found.records.append(record)
            else:
                found.damaged += 1
                found.damaged_bytes += record.end - offset
            offset = record.end
            continue
        following = _next_header(data, view, offset + 1, max_body, magic)
        if following is None:  # nothing readable follows: a torn tail (or damage at the very end)
            found.torn_tail = size - offset
            break
        found.damaged += 1
        found.damaged_bytes += following - offset
        offset = following


def _record_at(view: memoryview, offset: int, max_body: int, version_magic: bytes) -> tuple[Record | None, bool]:
    """The record whose header starts at `offset`, if the header is intact, and
    whether its body's checksum holds (legacy records have none: True)."""
    magic = bytes(view[offset:offset + 4])
    if magic != version_magic:
        return None, False
    if magic == MAGIC and offset + HEADER_SIZE <= len(view):
        prefix = view[offset:offset + _PREFIX.size]
        (check,) = _CHECK.unpack_from(view, offset + _PREFIX.size)
        if zlib.crc32(prefix) != check:
            return None, False
        _, kind, key, length, body_crc = _PREFIX.unpack(prefix)
        if kind not in KINDS or length > max_body:
            return None, False
        record = Record(kind, key, offset + HEADER_SIZE, length, offset)
        body_ok = record.end <= len(view) and zlib.crc32(view[record.offset:record.end]) == body_crc
        return record, body_ok
    if magic == LEGACY_MAGIC and offset + LEGACY_HEADER_SIZE <= len(view):
        _, kind, key, length = _LEGACY.unpack_from(view, offset)
        if kind not in KINDS or length > max_body or (kind == DELETE and length):
            return None, False
        return Record(kind, key, offset + LEGACY_HEADER_SIZE, length, offset), True
    return None, False


def _next_header(data: Segment, view: memoryview, start: int, max_body: int, magic: bytes) -> int | None:
    """The first offset at or after `start` where an intact header begins whose
    record fits in the segment."""
    position = data.find(magic, start)
    while position != -1:
        record, _ = _record_at(view, position, max_body, magic)
        if record is not None and record.end <= len(view):
            return position
        position = data.find(magic, position + 1)
    return None
