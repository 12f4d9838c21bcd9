"""The segment record format byte by byte (`dht.records`): a damaged header, a
damaged body and a torn tail each cost exactly the damaged record, and are
counted; any one flipped byte anywhere costs at most one record and never yields
a record that was not written."""

from __future__ import annotations

import hashlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from dht import records
from dht.records import DELETE, HEADER_SIZE, LEGACY_MAGIC, PUT, encode_header, scan

MAX = 1 << 20


def block(serial: int, size: int = 300) -> tuple[bytes, bytes]:
    body = (serial.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return hashlib.sha256(body).digest(), body


def segment(count: int, size: int = 300) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """`count` put records, and (key, header start, body start) of each."""
    data, where = bytearray(), []
    for serial in range(count):
        key, body = block(serial, size)
        where.append((key, len(data), len(data) + HEADER_SIZE))
        data += encode_header(PUT, key, body) + body
    return bytes(data), where


def flipped(data: bytes, position: int, mask: int = 0x40) -> bytes:
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1:]


def keys(data: bytes) -> list[bytes]:
    return [record.key for record in scan(data, MAX).records]


def test_an_intact_segment_gives_every_record_in_order() -> None:
    data, where = segment(300)
    found = scan(data, MAX)
    assert [r.key for r in found.records] == [key for key, _, _ in where]
    assert found.damaged == found.torn_tail == 0
    first = found.records[0]
    assert data[first.offset:first.end] == block(0)[1]


def test_a_flipped_magic_or_length_byte_costs_only_that_record() -> None:
    """The case the issue names: 100 of 300 kept, though 200 were intact."""
    data, where = segment(300)
    expected = [key for key, _, _ in where]
    for name, delta in (("magic", 0), ("length", 4 + 1 + 32 + 3), ("key", 10), ("header check", HEADER_SIZE - 1)):
        damaged = flipped(data, where[100][1] + delta)
        found = scan(damaged, MAX)
        assert [r.key for r in found.records] == expected[:100] + expected[101:], name
        assert found.damaged == 1 and found.torn_tail == 0


def test_a_flipped_body_byte_costs_only_that_record() -> None:
    data, where = segment(300)
    found = scan(flipped(data, where[150][2] + 17), MAX)
    assert len(found.records) == 299 and where[150][0] not in [r.key for r in found.records]
    assert found.damaged == 1


def test_a_torn_tail_costs_only_the_last_record() -> None:
    data, where = segment(10)
    for cut in (where[9][1] + 3, where[9][1] + HEADER_SIZE - 1, where[9][2] + 5, len(data) - 1):
        found = scan(data[:cut], MAX)
        assert len(found.records) == 9 and found.damaged == 0 and found.torn_tail == cut - where[9][1]


def test_tombstones_and_legacy_records_are_read() -> None:
    key, body = block(1)
    legacy = struct.pack(">4sB32sI", LEGACY_MAGIC, PUT, key, len(body)) + body
    legacy += struct.pack(">4sB32sI", LEGACY_MAGIC, DELETE, key, 0)
    assert [(r.kind, r.key) for r in scan(legacy, MAX, version=1).records] == [(PUT, key), (DELETE, key)]
    assert scan(legacy, MAX).records == []  # a version 2 segment takes no version 1 record
    modern = encode_header(DELETE, key, b"")
    assert [(r.kind, r.length) for r in scan(modern, MAX).records] == [(DELETE, 0)]


def test_a_record_longer_than_a_block_is_damage() -> None:
    key, body = block(1)
    data = encode_header(PUT, key, body) + body
    assert scan(data, 100).records == [] and scan(data, 100).torn_tail == len(data)


SMALL, WHERE = segment(12, size=40)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(SMALL) - 1), st.integers(1, 255))
def test_any_flipped_byte_costs_at_most_one_record_and_invents_none(position: int, mask: int) -> None:
    found = scan(flipped(SMALL, position, mask), MAX)
    written = {key: body_start for key, _, body_start in WHERE}
    assert len(found.records) >= len(WHERE) - 1
    for record in found.records:
        assert written[record.key] == record.offset  # a record that was written, where it was written
    assert found.damaged + (1 if found.torn_tail else 0) == len(WHERE) - len(found.records)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(SMALL)))
def test_any_cut_keeps_every_whole_record_before_it(cut: int) -> None:
    found = scan(SMALL[:cut], MAX)
    whole = [key for key, _, body_start in WHERE if body_start + 40 <= cut]
    assert [r.key for r in found.records] == whole and found.damaged == 0


def test_mmap_and_bytes_scan_alike(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import mmap

    data, _ = segment(20)
    path = tmp_path / "seg"
    path.write_bytes(flipped(data, 5000))
    with open(path, "rb") as source, mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert [r.key for r in records.scan(mapped, MAX).records] == keys(flipped(data, 5000))
