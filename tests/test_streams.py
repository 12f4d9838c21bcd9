"""SocketChannel, plain and TLS, over a connected socket pair: every byte arrives in
order, whatever the message sizes and whether the reader is already waiting; TLS
records that arrive together are handed over together; the end of the stream is b""."""

from __future__ import annotations

import os
import socket
from typing import AsyncIterator

import pytest
import trio

from dht.identity import Role
from dht.streams import TLS_RECORD, SocketChannel

from .processes import pki

pytestmark = pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])


def tcp_socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (a Unix socket pair ignores SO_RCVLOWAT in poll)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        left = socket.create_connection(listener.getsockname())
        right, _ = listener.accept()
    return left, right


async def channel_pair(tls: bool, tcp: bool = False) -> tuple[SocketChannel, SocketChannel]:
    left, right = tcp_socket_pair() if tcp else socket.socketpair()
    a, b = SocketChannel(left), SocketChannel(right)
    if tls:
        server = pki().credentials("streams-server", Role.NODE)
        client = pki().credentials("streams-client", Role.NODE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start_tls, server.server_context, True)
            nursery.start_soon(b.start_tls, client.client_context, False)
    return a, b


async def received(channel: SocketChannel, total: int, max_bytes: int = 256 * 1024) -> AsyncIterator[bytes]:
    got = 0
    while got < total:
        data = await channel.receive_some(max_bytes)
        assert data, "the stream ended early"
        got += len(data)
        yield data


async def test_small_messages_arrive_whole_one_by_one(tls: bool) -> None:
    a, b = await channel_pair(tls)
    with trio.fail_after(10):
        for size in (1, 5, 100, 1024, 8000):
            message = os.urandom(size)
            await a.send_all(message)
            assert await b.receive_some(256 * 1024) == message
    await a.aclose()
    await b.aclose()


async def test_a_reader_already_waiting_is_woken(tls: bool) -> None:
    a, b = await channel_pair(tls)
    message = os.urandom(300)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def send_later() -> None:
                await trio.sleep(0.05)
                await a.send_all(message)

            nursery.start_soon(send_later)
            assert await b.receive_some(1024) == message
    await a.aclose()
    await b.aclose()


async def test_a_large_message_arrives_in_order_and_records_are_gathered(tls: bool) -> None:
    a, b = await channel_pair(tls)
    message = os.urandom(600_000)
    pieces: list[bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, message)
            await trio.sleep(0.05)  # let the sender fill the socket buffers
            async for data in received(b, len(message)):
                pieces.append(data)
    assert b"".join(pieces) == message
    if tls:  # several records at once, not one 16 KiB record per call
        assert max(len(piece) for piece in pieces) > TLS_RECORD
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize("size", [10_000, 50_000])  # one TLS record: the rest waits inside OpenSSL, not the kernel
async def test_max_bytes_is_respected_and_nothing_is_lost(tls: bool, size: int) -> None:
    a, b = await channel_pair(tls)
    message = os.urandom(size)
    with trio.fail_after(10):
        await a.send_all(message)
        pieces = [data async for data in received(b, len(message), max_bytes=1000)]
    assert all(len(piece) <= 1000 for piece in pieces)
    assert b"".join(pieces) == message
    await a.aclose()
    await b.aclose()


async def test_the_end_of_the_stream_reads_as_empty_or_broken(tls: bool) -> None:
    """Plaintext ends with b""; TLS without close_notify (frames carry their own
    lengths, so close skips it) may also report the cut as a broken stream."""
    a, b = await channel_pair(tls)
    with trio.fail_after(10):
        await a.send_all(b"last words")
        assert await b.receive_some(100) == b"last words"
        await a.aclose()
        try:
            assert await b.receive_some(100) == b""
        except trio.BrokenResourceError:
            assert tls
    await b.aclose()


async def test_buffers_sent_together_arrive_as_one_stream_in_order(tls: bool) -> None:
    a, b = await channel_pair(tls)
    buffers = [b"head", os.urandom(200_000), b"", b"mid" * 10, bytearray(os.urandom(70_000)), memoryview(b"tail")]
    expected = b"".join(bytes(buffer) for buffer in buffers)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_many, buffers)
            got = b"".join([data async for data in received(b, len(expected))])
    assert got == expected
    await a.aclose()
    await b.aclose()


async def test_receive_into_fills_the_callers_buffer(tls: bool) -> None:
    a, b = await channel_pair(tls)
    message = os.urandom(150_000)
    target = bytearray(len(message))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, message)
            filled = 0
            while filled < len(target):
                count = await b.receive_into(memoryview(target)[filled:])
                assert count > 0
                filled += count
    assert target == message
    await a.aclose()
    await b.aclose()


async def test_a_reader_that_expects_a_long_message_wakes_once_most_of_it_is_in(tls: bool) -> None:
    """With `expect`, a wait lasts until the kernel holds most of the message
    (TLS: all but about one record), not until its first piece arrives."""
    a, b = await channel_pair(tls, tcp=True)
    message = os.urandom(200_000)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def send_in_pieces() -> None:
                for start in range(0, len(message), 50_000):
                    await trio.sleep(0.02)
                    await a.send_all(message[start : start + 50_000])

            nursery.start_soon(send_in_pieces)
            b.expect(len(message))
            first = await b.receive_some(len(message))
            assert len(first) >= len(message) - TLS_RECORD - 1024
            b.expect(len(message) - len(first))  # the rest: below the mark's minimum, any byte wakes
            rest = b"".join([data async for data in received(b, len(message) - len(first))])
    assert first + rest == message
    await a.aclose()
    await b.aclose()
