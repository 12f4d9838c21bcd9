"""Edges in front of a counting origin: every tier, request collapsing, ranges,
failures and bad input, over real loopback HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from edge.httpserver import Limits
from tools.edgerun import run_edge

from .cdnkit import CountingOrigin, edge_url, introduce, owner_of, start_edges, tier_of

SMALL = os.urandom(3000)


@pytest.fixture
async def origin(nursery: trio.Nursery) -> CountingOrigin:
    return await CountingOrigin().start(nursery)


async def get(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, headers=headers)


async def test_through_each_edge_origin_then_memory_then_disk_after_restart_and_others_from_the_owner(
    nursery: trio.Nursery, origin: CountingOrigin, tmp_path: Path
) -> None:
    disks = [str(tmp_path / f"disk{i}") for i in range(3)]
    edges = await start_edges(nursery, origin.url, 3, disk_dirs=disks)
    for index, owner in enumerate(edges):
        path = next(f"/{index}/{n}.bin" for n in range(1000) if owner_of(edges, f"/{index}/{n}.bin") is owner)
        body = os.urandom(3000 + index)
        origin.add(path, body)
        others = [edge for edge in edges if edge is not owner]

        cold = await get(edge_url(owner) + path)
        assert cold.status_code == 200 and cold.content == body and tier_of(cold) == "origin"
        warm = await get(edge_url(owner) + path)
        assert warm.content == body and tier_of(warm) == "memory"
        for other in others:
            via_owner = await get(edge_url(other) + path)
            assert via_owner.content == body and tier_of(via_owner) == "peer"
            assert via_owner.headers.get_list("cache-status")[0].startswith(f"{owner.config.name}; hit")
        assert origin.bodies_served[path] == 1

        # a new edge on the same disk directory finds it on disk
        config = owner.config
        restarted = await nursery.start(run_edge, type(config)(name=config.name, origin=origin.url, disk_dir=config.disk_dir), "127.0.0.1", 0)
        after = await get(edge_url(restarted) + path)
        assert after.content == body and tier_of(after) == "disk"
        assert origin.bodies_served[path] == 1


async def test_two_hundred_concurrent_cold_requests_reach_the_origin_once(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    body = os.urandom(10 * 1024 * 1024)
    origin.add("/big.bin", body)
    origin.delay = 0.2  # every request arrives while the first fetch is still open
    edges = await start_edges(nursery, origin.url, 3)
    results: list[bytes] = []
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def fetch(index: int) -> None:
            response = await client.get(edge_url(edges[index % 3]) + "/big.bin")
            assert response.status_code == 200
            results.append(response.content)

        async with trio.open_nursery() as requests:
            for index in range(200):
                requests.start_soon(fetch, index)
    assert len(results) == 200 and all(result == body for result in results)
    assert origin.bodies_served["/big.bin"] == 1
    assert origin.body_bytes == len(body)


async def test_ranges_from_every_tier(nursery: trio.Nursery, origin: CountingOrigin, tmp_path: Path) -> None:
    body = bytes(range(256)) * 40
    resource = origin.add("/r.bin", body)
    etag = dict(resource.headers)["ETag"]
    edges = await start_edges(nursery, origin.url, 2, disk_dirs=[str(tmp_path / "d0"), str(tmp_path / "d1")])
    owner = owner_of(edges, "/r.bin")
    other = next(edge for edge in edges if edge is not owner)

    for url in (edge_url(owner), edge_url(owner), edge_url(other)):  # origin, memory, peer
        single = await get(url + "/r.bin", Range="bytes=10-19")
        assert single.status_code == 206 and single.content == body[10:20]
        assert single.headers["content-range"] == f"bytes 10-19/{len(body)}"
    tiers = set()
    owner.memory.remove("/r.bin")  # next answer from the disk tier
    for url in (edge_url(owner), edge_url(other)):
        many = await get(url + "/r.bin", Range="bytes=0-1,-2")
        assert many.status_code == 206
        assert many.headers["content-type"].startswith("multipart/byteranges")
        assert body[:2] in many.content and body[-2:] in many.content
        tiers.add(tier_of(many))
        unsatisfiable = await get(url + "/r.bin", Range=f"bytes={len(body)}-")
        assert unsatisfiable.status_code == 416
        assert unsatisfiable.headers["content-range"] == f"bytes */{len(body)}"
        honoured = await get(url + "/r.bin", Range="bytes=0-3", **{"If-Range": etag})
        assert honoured.status_code == 206 and honoured.content == body[:4]
        ignored = await get(url + "/r.bin", Range="bytes=0-3", **{"If-Range": '"other"'})
        assert ignored.status_code == 200 and ignored.content == body
    assert "disk" in tiers
    assert origin.bodies_served["/r.bin"] == 1


async def test_a_client_conditional_is_answered_from_the_cache(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    resource = origin.add("/c.txt", b"hello")
    (edge,) = await start_edges(nursery, origin.url, 1)
    await get(edge_url(edge) + "/c.txt")
    again = await get(edge_url(edge) + "/c.txt", **{"If-None-Match": dict(resource.headers)["ETag"]})
    assert again.status_code == 304 and again.content == b"" and tier_of(again) == "memory"


async def test_a_dead_peer_is_skipped_and_a_dead_origin_gives_502(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/p.bin", SMALL)
    edges = await start_edges(nursery, origin.url, 2)
    owner = owner_of(edges, "/p.bin")
    other = next(edge for edge in edges if edge is not owner)
    introduce([other])  # nothing changes yet: it still knows the owner...
    other.set_peers({owner.config.name: "http://127.0.0.1:9", other.config.name: edge_url(other)})  # ...now dead
    fell_back = await get(edge_url(other) + "/p.bin")
    assert fell_back.status_code == 200 and tier_of(fell_back) == "origin"

    other.upstreams.origin = "http://127.0.0.1:9"
    missing = await get(edge_url(other) + "/never-fetched")
    assert missing.status_code == 502 and tier_of(missing) == "error"


async def test_stale_is_served_when_the_origin_dies(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/s.bin", SMALL, cache_control="max-age=0")
    (edge,) = await start_edges(nursery, origin.url, 1)
    assert (await get(edge_url(edge) + "/s.bin")).status_code == 200
    edge.upstreams.origin = "http://127.0.0.1:9"
    stale = await get(edge_url(edge) + "/s.bin")
    assert stale.status_code == 200 and stale.content == SMALL and tier_of(stale) == "stale-if-error"

    origin.add("/m.bin", SMALL, cache_control="max-age=0, must-revalidate")
    edge.upstreams.origin = origin.url
    await get(edge_url(edge) + "/m.bin")
    edge.upstreams.origin = "http://127.0.0.1:9"
    assert (await get(edge_url(edge) + "/m.bin")).status_code == 502


async def test_a_stale_copy_is_revalidated_not_refetched(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/v.bin", SMALL, cache_control="max-age=0")
    (edge,) = await start_edges(nursery, origin.url, 1)
    await get(edge_url(edge) + "/v.bin")
    again = await get(edge_url(edge) + "/v.bin")
    assert again.content == SMALL and tier_of(again) == "revalidated"
    assert origin.bodies_served["/v.bin"] == 1 and origin.requests["GET", "/v.bin"] == 2


async def test_metrics_count_requests_tiers_and_bytes(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/x", SMALL)
    (edge,) = await start_edges(nursery, origin.url, 1)
    for _ in range(3):
        await get(edge_url(edge) + "/x")
    text = (await get(edge_url(edge) + "/metrics")).text
    assert 'chordcdn_edge_hits_total{edge="e0",tier="memory"} 2.0' in text
    assert 'chordcdn_edge_upstream_fetches_total{edge="e0",tier="origin"} 1.0' in text
    assert f'chordcdn_edge_origin_bytes_total{{edge="e0"}} {float(len(SMALL))}' in text
    assert f'chordcdn_edge_served_bytes_total{{edge="e0"}} {float(3 * len(SMALL))}' in text


# -- bad input -------------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.move_on_after(wait):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received


async def test_bad_requests_get_their_status_and_the_edge_keeps_serving(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/ok", b"fine")
    (edge,) = await start_edges(nursery, origin.url, 1, limits=Limits(max_header_bytes=8192))
    garbage = await raw_exchange(edge.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    huge = await raw_exchange(edge.port, b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 ")
    bad_cid = await get(edge_url(edge) + "/cid/not-a-cid")
    assert bad_cid.status_code == 400
    absolute = await raw_exchange(edge.port, b"GET ftp://x/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert absolute.startswith(b"HTTP/1.1 400 ")
    assert (await get(edge_url(edge) + "/ok")).content == b"fine"


async def test_a_slow_loris_client_is_dropped(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    (edge,) = await start_edges(nursery, origin.url, 1, limits=Limits(header_timeout=0.5))
    stream = await trio.open_tcp_stream("127.0.0.1", edge.port)
    dropped = False
    with trio.move_on_after(5):
        for _ in range(50):  # a byte every 0.1 s: each read is quick, the request never ends
            try:
                await stream.send_all(b"X")
            except trio.BrokenResourceError:
                dropped = True
                break
            with trio.move_on_after(0.1):
                if await stream.receive_some(100) == b"":
                    dropped = True
                    break
    await stream.aclose()
    assert dropped


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/one", b"1")
    origin.add("/two", b"22")
    (edge,) = await start_edges(nursery, origin.url, 1)
    requests = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(edge.port, requests)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    bodies = [part.split(b"\r\n\r\n", 1)[1][:2] for part in answer.split(b"HTTP/1.1 200 OK")[1:]]
    assert [body.rstrip(b"H") for body in bodies] == [b"1", b"22", b"1"]


async def test_a_private_answer_goes_only_to_the_request_that_asked(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/me", b"alice's page", cache_control="private")
    origin.add("/all", b"everyone's page", cache_control="public, max-age=60")
    origin.delay = 0.3  # the second request arrives while the first fetch is open
    (edge,) = await start_edges(nursery, origin.url, 1)
    async with trio.open_nursery() as requests:
        for path in ("/me", "/me", "/all", "/all"):
            requests.start_soon(get, edge_url(edge) + path)
            await trio.sleep(0.05)
    assert origin.requests["GET", "/me"] == 2  # each got its own answer
    assert origin.requests["GET", "/all"] == 1  # collapsed
    assert "/me" not in edge.memory.lru  # never stored


async def test_a_parent_edge_is_asked_before_the_origin(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    origin.add("/p", SMALL)
    (parent,) = await start_edges(nursery, origin.url, 1)
    (child,) = await start_edges(nursery, origin.url, 1, parent=edge_url(parent))
    first = await get(edge_url(child) + "/p")
    assert first.content == SMALL and tier_of(first) == "parent"
    assert first.headers.get_list("cache-status")[0].startswith("e0; fwd=uri-miss")  # the parent went to the origin
    second_child = await start_edges(nursery, origin.url, 1, parent=edge_url(parent))
    again = await get(edge_url(second_child[0]) + "/p")
    assert tier_of(again) == "parent" and again.headers.get_list("cache-status")[0] == "e0; hit; detail=memory"
    assert origin.bodies_served["/p"] == 1


async def test_a_revalidation_counts_as_an_origin_fetch(nursery: trio.Nursery, origin: CountingOrigin) -> None:
    """A 304 from the origin is a fetch from the origin: /metrics says so."""
    origin.add("/v.txt", b"validated", cache_control="max-age=0")
    (edge,) = await start_edges(nursery, origin.url, 1)
    assert (await get(edge_url(edge) + "/v.txt")).status_code == 200
    again = await get(edge_url(edge) + "/v.txt")
    assert again.status_code == 200 and again.content == b"validated" and "revalidated" in again.headers["cache-status"]
    metrics = (await get(edge_url(edge) + "/metrics")).text
    assert 'chordcdn_edge_upstream_fetches_total{edge="e0",tier="origin"} 2.0' in metrics, metrics
