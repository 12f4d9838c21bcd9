"""SendQueue: small pieces copied together, large ones kept as they are, in order."""

from __future__ import annotations

from dht.streams import COALESCE_BELOW, SendQueue


def test_small_pieces_are_joined_and_large_ones_kept_in_order() -> None:
    queue = SendQueue()
    large = b"L" * COALESCE_BELOW
    queue.add(b"ab", b"cd")
    queue.add(large)
    queue.add(b"ef")
    assert queue and queue.size == 6 + len(large)
    buffers = queue.take()
    assert [bytes(buffer) for buffer in buffers] == [b"abcd", large, b"ef"]
    assert buffers[1] is large  # not copied
    assert not queue and queue.size == 0 and queue.take() == []


def test_a_queue_taken_is_independent_of_what_is_added_next() -> None:
    queue = SendQueue()
    queue.add(b"first")
    taken = queue.take()
    queue.add(b"second")
    assert [bytes(buffer) for buffer in taken] == [b"first"]
    assert [bytes(buffer) for buffer in queue.take()] == [b"second"]
