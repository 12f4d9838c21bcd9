"""The DHT tier: an origin publishes into a real TCP ring, and edges take bodies
from the ring by CID, verified, instead of from the origin."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import httpx
import pytest
import trio

from dht.node import ChordNode, NodeConfig
from tools.originrun import RunningOrigin, run_origin
from origin.server import OriginConfig
from tools.noderun import serve_local_node

from .cdnkit import edge_url, owner_of, start_edges, tier_of
from .test_tcp_ring import client_credentials, node_credentials

FAST = NodeConfig(stabilize_interval=0.2, fix_fingers_interval=0.1, check_predecessor_interval=0.2, rpc_timeout=0.5)
LARGE = os.urandom(3 * 1024 * 1024 + 123)  # several leaves


async def start_ring(nursery: trio.Nursery, count: int) -> list[ChordNode]:
    ring: list[ChordNode] = []
    for _ in range(count):
        serve = functools.partial(serve_local_node, ring[0].me.address if ring else None, FAST, tls=node_credentials())
        ring.append(await nursery.start(serve))
    with trio.fail_after(20):
        while not all(node.routing.successors for node in ring):
            await trio.sleep(0.05)
    return ring


@pytest.fixture
async def published(nursery: trio.Nursery, tmp_path: Path) -> tuple[list[ChordNode], RunningOrigin]:
    (tmp_path / "large.bin").write_bytes(LARGE)
    (tmp_path / "note.txt").write_text("from the ring\n")
    ring = await start_ring(nursery, 4)
    serve = functools.partial(run_origin, OriginConfig(root=tmp_path, rescan=0.5), "127.0.0.1", 0, ring[0].me.address, ring_tls=client_credentials())
    running = await nursery.start(serve)
    with trio.fail_after(30):
        await running.origin.wait_published()
    return ring, running


async def test_with_the_origin_body_endpoint_stopped_the_body_comes_from_the_dht(
    nursery: trio.Nursery, published: tuple[list[ChordNode], RunningOrigin]
) -> None:
    ring, running = published
    running.origin.body_serving = False
    edges = await start_edges(nursery, f"http://127.0.0.1:{running.port}", 2, dht=ring[1].me.address)
    owner = owner_of(edges, "/large.bin")
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(edge_url(owner) + "/large.bin")
        assert response.status_code == 200 and response.content == LARGE
        assert tier_of(response) == "dht"
        assert response.headers["etag"] == f'"{running.origin.published["/large.bin"]}"'
        again = await client.get(edge_url(owner) + "/large.bin", headers={"Range": "bytes=100-199"})
        assert again.status_code == 206 and again.content == LARGE[100:200] and tier_of(again) == "memory"
        direct = await client.get(f"http://127.0.0.1:{running.port}/large.bin")
        assert direct.status_code == 503  # the origin really refuses bodies
    assert running.origin.stats.body_bytes == 0


async def test_content_by_cid_whole_ranged_and_head(nursery: trio.Nursery, published: tuple[list[ChordNode], RunningOrigin]) -> None:
    ring, running = published
    (edge,) = await start_edges(nursery, f"http://127.0.0.1:{running.port}", 1, dht=ring[2].me.address)
    cid = running.origin.published["/large.bin"]
    url = f"{edge_url(edge)}/cid/{cid}"
    async with httpx.AsyncClient(timeout=30) as client:
        whole = await client.get(url)
        assert whole.status_code == 200 and whole.content == LARGE
        assert whole.headers["etag"] == f'"{cid}"'
        assert "immutable" in whole.headers["cache-control"]
        cached = await client.get(url)
        assert cached.content == LARGE and tier_of(cached) == "memory", "an immutable answer by CID is kept in the edge's tiers"
        middle = 2 * 1024 * 1024
        ranged = await client.get(url, headers={"Range": f"bytes={middle}-{middle + 999}"})
        assert ranged.status_code == 206 and ranged.content == LARGE[middle : middle + 1000]
        several = await client.get(url, headers={"Range": "bytes=0-9,-10"})
        assert several.status_code == 206 and LARGE[:10] in several.content and LARGE[-10:] in several.content
        head = await client.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(LARGE)) and head.content == b""
        conditional = await client.get(url, headers={"If-None-Match": f'"{cid}"'})
        assert conditional.status_code == 304
        too_far = await client.get(url, headers={"Range": f"bytes={len(LARGE)}-"})
        assert too_far.status_code == 416


async def test_unknown_cid_is_404_within_a_bounded_time_and_bad_cid_400(
    nursery: trio.Nursery, published: tuple[list[ChordNode], RunningOrigin]
) -> None:
    ring, running = published
    (edge,) = await start_edges(nursery, f"http://127.0.0.1:{running.port}", 1, dht=ring[0].me.address, cid_timeout=2.0)
    async with httpx.AsyncClient(timeout=30) as client:
        started = trio.current_time()
        unknown = await client.get(f"{edge_url(edge)}/cid/{'ab' * 32}")
        assert unknown.status_code == 404
        assert trio.current_time() - started < 5.0
        for bad in ("xyz", "ab" * 31, "g" * 64):
            assert (await client.get(f"{edge_url(edge)}/cid/{bad}")).status_code == 400
