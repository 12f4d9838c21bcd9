"""Test helpers for the HTTP side: a scriptable origin that counts what it serves,
and clusters of real edges in this process, each on its own loopback port."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass, field

import httpx
import trio

from edge.httpserver import Limits, Request, Response, bound_port, serve_http, simple_response
from edge.proxy import Edge, EdgeConfig
from dht.identity import Role
from tools.edgerun import run_edge

from .processes import pki


@dataclass
class Resource:
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200


class CountingOrigin:
    """An origin whose every answer a test sets, and which counts requests and the
    body bytes it sends per path, so a test can tell a cache hit from a forward."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.bodies_served: Counter[str] = Counter()
        self.body_bytes = 0
        self.port = 0
        self.delay = 0.0  # seconds before answering, to widen races in tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path: str, body: bytes, cache_control: str = "public, max-age=300", **extra: str) -> Resource:
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = [("Content-Type", "application/octet-stream"), ("Cache-Control", cache_control), ("ETag", etag)]
        headers += [(name.replace("_", "-"), value) for name, value in extra.items()]
        resource = self.resources[path] = Resource(body, headers)
        return resource

    async def handle(self, request: Request) -> Response:
        self.requests[request.method, request.target] += 1
        if self.delay:
            await trio.sleep(self.delay)
        resource = self.resources.get(request.target)
        if resource is None:
            return simple_response(404)
        etag = dict((k.lower(), v) for k, v in resource.headers).get("etag")
        if etag and request.headers.get("if-none-match") == etag:
            return Response(304, [h for h in resource.headers if h[0].lower() in ("etag", "cache-control")])
        if request.method == "HEAD":
            return Response(resource.status, [*resource.headers, ("Content-Length", str(len(resource.body)))])
        self.bodies_served[request.target] += 1
        self.body_bytes += len(resource.body)
        return Response(resource.status, list(resource.headers), self._stream(resource.body))

    @staticmethod
    async def _stream(body: bytes):  # type: ignore[no-untyped-def]
        for offset in range(0, len(body), 256 * 1024):
            yield body[offset : offset + 256 * 1024]
            await trio.sleep(0)

    async def start(self, nursery: trio.Nursery) -> "CountingOrigin":
        listeners = await nursery.start(functools.partial(serve_http, self.handle, "127.0.0.1", 0))
        self.port = bound_port(listeners)
        return self


async def start_edges(
    nursery: trio.Nursery, origin: str, count: int, *, dht: str | None = None, disk_dirs: list[str] | None = None,
    limits: Limits = Limits(), **options: object,
) -> list[Edge]:
    """`count` edges named e0, e1, ... that know each other; with `dht`, each
    reads the ring with a reader certificate from the test PKI."""
    edges = []
    for index in range(count):
        disk = disk_dirs[index] if disk_dirs else None
        config = EdgeConfig(name=f"e{index}", origin=origin, dht=dht, disk_dir=disk, **options)  # type: ignore[arg-type]
        ring_tls = pki().credentials(f"edge-{index}", Role.READER) if dht else None
        edges.append(await nursery.start(run_edge, config, "127.0.0.1", 0, limits, ring_tls))
    introduce(edges)
    return edges


def introduce(edges: list[Edge]) -> None:
    urls = {edge.config.name: edge_url(edge) for edge in edges}
    for edge in edges:
        edge.set_peers(urls)


def edge_url(edge: Edge) -> str:
    return f"http://127.0.0.1:{edge.port}"


def tier_of(response: httpx.Response) -> str:
    """The tier the last cache named in Cache-Status says it served from."""
    last = response.headers.get_list("cache-status")[-1] if "cache-status" in response.headers else ""
    status = last.split(";")[-1].strip()
    return status.removeprefix("detail=") if status.startswith("detail=") else status


def owner_of(edges: list[Edge], target: str) -> Edge:
    name = edges[0].ring.owner(target)
    return next(edge for edge in edges if edge.config.name == name)
