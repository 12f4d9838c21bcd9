"""A read whose leaves the ring has lost: the DHT client asks a fallback for exactly
those leaves and keeps only bytes that hash to the leaf's key. Then the same through
the edge's `OriginLeaves`, against a scripted origin answering Range requests."""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import trio

from dht.client import BlockNotFound, DhtClient
from dht.ids import IdSpace
from dht.merkle import BlockError, DagBuilder, block_hash
from dht.messages import LookupResult
from dht.routing import NodeRef
from edge.client import HttpClient
from edge.fallback import LeafUnavailable, OriginLeaves
from edge.httpserver import Request, Response, bound_port, serve_http

CHUNK = 1024
DATA = os.urandom(10 * CHUNK + 300)
HOLDER = NodeRef(1, "127.0.0.1:1")


def dag(data: bytes, chunk: int = CHUNK, fanout: int = 4) -> tuple[dict[bytes, bytes], str]:
    builder, blocks = DagBuilder(chunk, fanout), []
    for start in range(0, len(data), chunk):
        blocks += builder.add_chunk(data[start : start + chunk])
    rest, root = builder.finish()
    return {block_hash(block): block for block in blocks + rest}, root.hex()


def client_over(blocks: dict[bytes, bytes]) -> DhtClient:
    async def call(node: NodeRef, method: str, *args: Any) -> Any:
        assert method == "get_block"
        return blocks.get(args[0])

    async def locate(position: int) -> LookupResult:
        return LookupResult(position, HOLDER, [HOLDER])

    return DhtClient(call, locate, IdSpace(), replicas=1)


def leaf_key(data: bytes, index: int) -> bytes:
    return block_hash(data[index * CHUNK : (index + 1) * CHUNK])


async def read(client: DhtClient, cid: str, start: int = 0, end: int | None = None, fallback: Any = None) -> bytes:
    received: list[bytes] = []

    async def sink(data: bytes) -> None:
        received.append(data)

    await client.read(cid, sink, start, end, fallback)
    return b"".join(received)


async def test_lost_leaves_come_from_the_fallback_and_only_those() -> None:
    blocks, cid = dag(DATA)
    for index in (3, 7):  # two leaves, under different inner nodes (fanout 4)
        del blocks[leaf_key(DATA, index)]
    asked: list[tuple[int, int]] = []

    async def fallback(offset: int, size: int) -> bytes:
        asked.append((offset, size))
        return DATA[offset : offset + size]

    client = client_over(blocks)
    assert await read(client, cid, fallback=fallback) == DATA
    assert sorted(asked) == [(3 * CHUNK, CHUNK), (7 * CHUNK, CHUNK)]
    assert await read(client, cid, 3 * CHUNK + 10, 7 * CHUNK + 5, fallback) == DATA[3 * CHUNK + 10 : 7 * CHUNK + 5]


async def test_without_a_fallback_a_lost_leaf_fails_the_read() -> None:
    blocks, cid = dag(DATA)
    del blocks[leaf_key(DATA, 2)]
    with pytest.raises(BlockNotFound):
        await read(client_over(blocks), cid)


async def test_a_fallback_that_sends_other_bytes_is_refused() -> None:
    blocks, cid = dag(DATA)
    del blocks[leaf_key(DATA, 5)]

    async def liar(offset: int, size: int) -> bytes:
        return bytes(size)  # the right length, the wrong bytes

    with pytest.raises(BlockError):
        await read(client_over(blocks), cid, fallback=liar)


# -- OriginLeaves against an origin ---------------------------------------------------------


class RangeOrigin:
    """Serves DATA at /f with ETag "<cid>", honouring Range and If-Match like the origin."""

    def __init__(self, cid: str, answer_status: int | None = None) -> None:
        self.cid, self.answer_status, self.requests = cid, answer_status, []  # type: ignore[var-annotated]

    async def handle(self, request: Request) -> Response:
        self.requests.append(request.headers.items())
        if request.headers.get("if-match") != f'"{self.cid}"':
            return Response(412)
        first, last = (int(part) for part in (request.headers.get("range") or "").removeprefix("bytes=").split("-"))
        status = self.answer_status or 206
        fields = [("Content-Range", f"bytes {first}-{last}/{len(DATA)}")] if status == 206 else []
        return Response(status, fields, DATA[first : last + 1])


async def origin_leaves(nursery: trio.Nursery, origin: RangeOrigin, cid: str) -> tuple[OriginLeaves, HttpClient]:
    listeners = await nursery.start(functools.partial(serve_http, origin.handle, "127.0.0.1", 0))
    http = HttpClient(5.0)
    used: list[int] = []
    return OriginLeaves(http, f"http://127.0.0.1:{bound_port(listeners)}/f", cid, [("Via", "1.1 e1")], lambda: used.append(1)), http


async def test_origin_leaves_finish_a_read_by_range_on_the_cid(nursery: trio.Nursery) -> None:
    blocks, cid = dag(DATA)
    del blocks[leaf_key(DATA, 10)]  # the last, short leaf
    del blocks[leaf_key(DATA, 0)]
    origin = RangeOrigin(cid)
    leaves, http = await origin_leaves(nursery, origin, cid)
    assert await read(client_over(blocks), cid, fallback=leaves) == DATA
    await http.aclose()
    ranges = sorted(dict(fields)["range"] for fields in origin.requests)
    assert ranges == [f"bytes=0-{CHUNK - 1}", f"bytes={10 * CHUNK}-{len(DATA) - 1}"]
    assert all(dict(fields)["if-match"] == f'"{cid}"' for fields in origin.requests)


@pytest.mark.parametrize("status", [200, 412])
async def test_origin_leaves_refuse_anything_but_the_exact_206(nursery: trio.Nursery, status: int) -> None:
    _, cid = dag(DATA)
    leaves, http = await origin_leaves(nursery, RangeOrigin(cid if status == 200 else "ff" * 32, status), cid)
    with pytest.raises(LeafUnavailable):
        await leaves(0, CHUNK)
    await http.aclose()
