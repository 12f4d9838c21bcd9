"""The origin server in process: headers, ranges, conditionals, path safety, CIDs,
publishing into a real 3-node TCP ring, and the `chordcdn origin` command.

Real time: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import functools

import io
import os
import random
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import trio

from dht.blockstore import MemoryBlockStore
from dht.client import DhtClient
from dht.messages import LookupResult
from dht.ids import IdSpace
from dht.merkle import block_hash
from dht.node import ChordNode, NodeConfig
from dht.routing import NodeRef
from dht.storage import BlockService, StorageConfig
from dht.tcp import open_tcp_transport
from edge.validators import format_http_date
from origin.catalog import BadPath, Catalog, ForbiddenPath, NotFoundError, cid_of
from tools.originrun import RunningOrigin, run_origin
from origin.server import Origin, OriginConfig, parse_cache_control_rule

from .processes import CHORDCDN, chordcdn
from .test_tcp_ring import LocalRing, client_credentials, eventually, node_credentials

BIG = random.Random(5).randbytes(700_000)  # three 256 KiB chunks: a real DAG


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    files = {
        "hello.txt": b"hello, origin\n",
        "index.html": b"<h1>home</h1>\n",
        "big.bin": BIG,
        "static/app.js": b"console.log(1)\n",
        "static/style.css": b"body{}\n",
        "static/fonts/a.woff2": b"\x00font",
        "img/logo.png": b"\x89PNG",
        "data.json": b"{}",
        "archive.tar.gz": b"\x1f\x8b",
        "README": b"no extension",
        "docs/index.html": b"<h1>docs</h1>\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "empty").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    return root


@dataclass
class Served:
    origin: Origin
    client: httpx.AsyncClient

    async def raw(self, method: str, target: str, **options: Any) -> httpx.Response:
        """A request whose target goes out exactly as given (httpx would normalize `..`)."""
        return await self.client.request(method, "/", extensions={"target": target.encode()}, **options)


async def start_origin(nursery: trio.Nursery, config: OriginConfig, dht: str | None = None) -> RunningOrigin:
    ring_tls = client_credentials() if dht else None
    return await nursery.start(functools.partial(run_origin, config, "127.0.0.1", 0, dht, ring_tls=ring_tls))


@pytest.fixture
async def served(nursery: trio.Nursery, site: Path) -> AsyncIterator[Served]:
    rules = (("/static/", "public, max-age=3600"), ("/static/fonts/", "public, max-age=31536000, immutable"))
    running = await start_origin(nursery, OriginConfig(site, rules))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as client:
        yield Served(running.origin, client)


def etag_of(data: bytes) -> str:
    return f'"{cid_of_bytes(data)}"'


def cid_of_bytes(data: bytes) -> str:
    return cid_of(io.BytesIO(data))


# -- GET and HEAD ---------------------------------------------------------------------


async def test_get_and_head_carry_every_header(served: Served, site: Path) -> None:
    body = (site / "hello.txt").read_bytes()
    get = await served.client.get("/hello.txt")
    assert get.status_code == 200 and get.content == body
    cid = cid_of_bytes(body)
    assert get.headers["etag"] == f'"{cid}"'
    assert get.headers["x-content-cid"] == cid
    assert get.headers["last-modified"] == format_http_date((site / "hello.txt").stat().st_mtime)
    assert get.headers["content-type"] == "text/plain; charset=utf-8"
    assert get.headers["cache-control"] == "public, max-age=60"
    assert get.headers["accept-ranges"] == "bytes"
    assert get.headers["content-length"] == str(len(body))
    head = await served.client.head("/hello.txt")
    assert head.status_code == 200 and head.content == b""
    for name in ("etag", "x-content-cid", "last-modified", "content-type", "cache-control", "accept-ranges", "content-length"):
        assert head.headers[name] == get.headers[name], name


async def test_a_large_file_streams_whole(served: Served) -> None:
    response = await served.client.get("/big.bin")
    assert response.status_code == 200 and response.content == BIG
    assert response.headers["etag"] == etag_of(BIG)
    assert served.origin.stats.bodies["/big.bin"] == 1 and served.origin.stats.body_bytes == len(BIG)


async def test_a_file_shrinking_mid_body_breaks_only_that_connection(served: Served, site: Path) -> None:
    with open(site / "huge.bin", "wb") as huge:
        huge.truncate(256 * 1024 * 1024)  # sparse: more than loopback buffers hold
    async with served.client.stream("GET", "/huge.bin") as response:
        assert response.status_code == 200
        stream = response.aiter_raw()
        await stream.__anext__()
        os.truncate(site / "huge.bin", 1000)
        with pytest.raises(httpx.RemoteProtocolError):
            async for _ in stream:
                pass
    assert (await served.client.get("/hello.txt")).status_code == 200  # the server lives on


async def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    ports = set()
    for path in ("/hello.txt", "/index.html", "/big.bin", "/missing", "/hello.txt"):
        response = await served.client.get(path)
        assert response.status_code in (200, 404)
        ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1


async def test_directories_serve_their_index_and_are_never_listed(served: Served) -> None:
    for path in ("/", "/docs/", "/docs"):
        response = await served.client.get(path)
        assert response.status_code == 200, path
    assert (await served.client.get("/docs/")).content == b"<h1>docs</h1>\n"
    assert (await served.client.get("/empty/")).status_code == 404
    assert (await served.client.get("/static/")).status_code == 404
    assert (await served.client.get("/hello.txt/")).status_code == 404  # a file is not a directory


# -- ranges ------------------------------------------------------------------------------


async def test_a_single_range_is_206_with_content_range(served: Served) -> None:
    response = await served.client.get("/big.bin", headers={"Range": "bytes=262140-262150"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 262140-262150/{len(BIG)}"
    assert response.content == BIG[262140:262151]
    assert response.headers["etag"] == etag_of(BIG)
    suffix = await served.client.get("/big.bin", headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == BIG[-100:]


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", response.headers["content-type"])
    assert boundary, response.headers["content-type"]
    pieces = response.content.split(b"\r\n--" + boundary.group(1).encode())
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        head, _, data = piece.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        parts.append(({name.lower(): value for name, value in fields.items()}, data))
    return parts


async def test_multiple_ranges_are_206_multipart_byteranges(served: Served) -> None:
    response = await served.client.get("/big.bin", headers={"Range": "bytes=0-9, 300000-300099, -5"})
    assert response.status_code == 206
    assert int(response.headers["content-length"]) == len(response.content)
    parts = parse_multipart(response)
    size = len(BIG)
    expected = [(0, 9), (300000, 300099), (size - 5, size - 1)]
    assert len(parts) == len(expected)
    for (fields, data), (start, end) in zip(parts, expected):
        assert fields["content-range"] == f"bytes {start}-{end}/{size}"
        assert fields["content-type"] == "application/octet-stream"
        assert data == BIG[start : end + 1]


async def test_an_unsatisfiable_range_is_416(served: Served, site: Path) -> None:
    size = (site / "hello.txt").stat().st_size
    response = await served.client.get("/hello.txt", headers={"Range": f"bytes={size}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"


async def test_if_range_honours_the_range_only_for_the_current_etag(served: Served) -> None:
    current = {"Range": "bytes=0-3", "If-Range": etag_of(BIG)}
    response = await served.client.get("/big.bin", headers=current)
    assert response.status_code == 206 and response.content == BIG[:4]
    stale = {"Range": "bytes=0-3", "If-Range": '"' + "0" * 64 + '"'}
    response = await served.client.get("/big.bin", headers=stale)
    assert response.status_code == 200 and response.content == BIG


# -- conditionals ------------------------------------------------------------------------------


async def test_if_none_match_is_304_with_validators_and_no_body(served: Served) -> None:
    full = await served.client.get("/hello.txt")
    for tag in (full.headers["etag"], "W/" + full.headers["etag"], f'"nope", {full.headers["etag"]}', "*"):
        response = await served.client.get("/hello.txt", headers={"If-None-Match": tag})
        assert response.status_code == 304, tag
        assert response.content == b""
        for name in ("etag", "cache-control", "last-modified"):
            assert response.headers[name] == full.headers[name]
    changed = await served.client.get("/hello.txt", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200


async def test_if_modified_since_is_304_unless_modified_later(served: Served, site: Path) -> None:
    mtime = (site / "hello.txt").stat().st_mtime
    same = await served.client.get("/hello.txt", headers={"If-Modified-Since": format_http_date(mtime)})
    assert same.status_code == 304 and same.content == b""
    earlier = await served.client.get("/hello.txt", headers={"If-Modified-Since": format_http_date(mtime - 3600)})
    assert earlier.status_code == 200
    if_match = await served.client.get("/hello.txt", headers={"If-Match": '"other"'})
    assert if_match.status_code == 412


# -- headers per file ------------------------------------------------------------------


async def test_cache_control_follows_the_longest_prefix(served: Served) -> None:
    expected = {
        "/hello.txt": "public, max-age=60",
        "/static/app.js": "public, max-age=3600",
        "/static/fonts/a.woff2": "public, max-age=31536000, immutable",
    }
    for path, value in expected.items():
        assert (await served.client.get(path)).headers["cache-control"] == value, path


async def test_content_types(served: Served) -> None:
    expected = {
        "/index.html": "text/html; charset=utf-8",
        "/static/style.css": "text/css; charset=utf-8",
        "/static/app.js": "; charset=utf-8",  # text/javascript or application/javascript, by Python version
        "/img/logo.png": "image/png",
        "/data.json": "application/json; charset=utf-8",
        "/archive.tar.gz": "application/gzip",  # served as is, never with Content-Encoding
        "/README": "application/octet-stream",
    }
    for path, kind in expected.items():
        response = await served.client.get(path)
        assert response.headers["content-type"].endswith(kind), path
        assert "content-encoding" not in response.headers


# -- path safety ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/../etc/passwd", "/%2e%2e/x", "/a/../../x", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
        "/docs/%2E%2E/%2e%2e/secret.txt", "//etc/passwd",
    ],
)
async def test_traversal_is_404(served: Served, target: str) -> None:
    assert (await served.raw("GET", "/docs/%2e/index.html")).status_code == 200  # the target really goes out raw
    response = await served.raw("GET", target)
    assert response.status_code == 404, target
    assert b"outside the root" not in response.content


@pytest.mark.parametrize("target", ["/hello.txt%00.png", "/a%00/../hello.txt", "hello.txt"])
async def test_malformed_paths_are_400(served: Served, target: str) -> None:
    assert (await served.raw("GET", target)).status_code == 400


async def test_symlinks_leaving_the_root_are_403(served: Served, site: Path) -> None:
    (site / "escape.txt").symlink_to(site.parent / "secret.txt")
    (site / "escape-dir").symlink_to(site.parent)
    (site / "inside.txt").symlink_to(site / "hello.txt")
    assert (await served.client.get("/escape.txt")).status_code == 403
    assert (await served.client.get("/escape-dir/secret.txt")).status_code == 403
    inside = await served.client.get("/inside.txt")
    assert inside.status_code == 200 and inside.content == (site / "hello.txt").read_bytes()


def test_resolve_raises_typed_errors(site: Path) -> None:
    catalog = Catalog(site)
    assert catalog.resolve("/docs/") == (site / "docs" / "index.html").resolve()
    with pytest.raises(NotFoundError):
        catalog.resolve("/../secret.txt")
    with pytest.raises(NotFoundError):
        catalog.resolve("/missing")
    with pytest.raises(BadPath):
        catalog.resolve("/a\x00b")
    (site / "out").symlink_to(site.parent / "secret.txt")
    with pytest.raises(ForbiddenPath):
        catalog.resolve("/out")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405(served: Served, method: str) -> None:
    response = await served.client.request(method, "/hello.txt", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


# -- CIDs and changes --------------------------------------------------------------------------


async def test_a_changed_file_gets_a_new_etag(served: Served, site: Path) -> None:
    path = site / "hello.txt"
    before = (await served.client.get("/hello.txt")).headers["etag"]
    path.write_bytes(b"new content\n")
    response = await served.client.get("/hello.txt")
    assert response.content == b"new content\n" and response.headers["etag"] == etag_of(b"new content\n") != before
    stat = path.stat()  # same size and mtime, new bytes: ctime and the inode still tell
    replacement = site / "hello.tmp"
    replacement.write_bytes(b"NEW CONTENT\n")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.rename(path)
    response = await served.client.get("/hello.txt")
    assert response.content == b"NEW CONTENT\n" and response.headers["etag"] == etag_of(b"NEW CONTENT\n")


class MemoryRing:
    """Just enough of a ring for DhtClient: every block in one dict."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self.me = NodeRef(0, "memory")

    async def call(self, node: NodeRef, method: str, *args: Any) -> Any:
        assert method == "put_block"
        key, data = args
        assert block_hash(data) == key
        self.blocks[key] = data
        return True

    async def locate(self, position: int) -> LookupResult:
        return LookupResult(position, self.me, [self.me])


async def test_cid_equals_what_put_file_returns(served: Served, site: Path) -> None:
    ring = MemoryRing()
    client = DhtClient(ring.call, ring.locate, IdSpace(), replicas=1)
    with open(site / "big.bin", "rb") as source:
        put = await client.put_file(source)
    assert (await served.client.head("/big.bin")).headers["x-content-cid"] == put
    assert cid_of(io.BytesIO(BIG), chunk_size=1024, fanout=4) == await client.put_file(io.BytesIO(BIG), 1024, 4)
    assert cid_of(io.BytesIO(b"")) == await client.put_file(io.BytesIO(b""))


async def test_body_serving_off_answers_503_but_metadata_still_works(served: Served) -> None:
    served.origin.body_serving = False
    assert (await served.client.get("/big.bin")).status_code == 503
    assert (await served.client.get("/big.bin", headers={"Range": "bytes=0-1"})).status_code == 503
    head = await served.client.head("/big.bin")
    assert head.status_code == 200 and head.headers["etag"] == etag_of(BIG)
    assert (await served.client.get("/big.bin", headers={"If-None-Match": etag_of(BIG)})).status_code == 304
    assert served.origin.stats.bodies["/big.bin"] == 0 and served.origin.stats.body_bytes == 0
    served.origin.body_serving = True
    assert (await served.client.get("/big.bin")).content == BIG
    assert served.origin.stats.bodies["/big.bin"] == 1


async def test_stats_count_requests_and_bodies(served: Served) -> None:
    await served.client.get("/hello.txt")
    await served.client.head("/hello.txt")
    await served.client.get("/hello.txt", headers={"Range": "bytes=0-4"})
    await served.client.get("/missing")
    stats = served.origin.stats
    assert stats.requests == 4
    assert stats.bodies == {"/hello.txt": 2}
    assert stats.body_bytes == len(b"hello, origin\n") + 5
    assert stats.statuses == {200: 2, 206: 1, 404: 1}


def test_config_rules_are_checked() -> None:
    assert parse_cache_control_rule("/static/=public, max-age=3600") == ("/static/", "public, max-age=3600")
    for bad in ("static=x", "/static", "/a=", "/a=x\r\nSet-Cookie: y"):
        with pytest.raises(ValueError):
            parse_cache_control_rule(bad)
    with pytest.raises(ValueError):
        OriginConfig(Path("."), rescan=0)
    config = OriginConfig(Path("."), (("/", "no-cache"), ("/a/", "max-age=1")))
    assert config.cache_control_for("/a/b") == "max-age=1" and config.cache_control_for("/b") == "no-cache"


# -- publishing into a real ring ----------------------------------------------------------------


class StoringRing(LocalRing):
    """LocalRing whose nodes store blocks."""

    @staticmethod
    async def _serve(
        join: str | None, config: NodeConfig, task_status: trio.TaskStatus[tuple[ChordNode, trio.CancelScope]]
    ) -> None:
        with trio.CancelScope() as scope:
            async with open_tcp_transport("127.0.0.1", 0, tls=node_credentials()) as transport:
                node = ChordNode(transport, config)
                BlockService(node, MemoryBlockStore(node.space), StorageConfig(replicas=3))
                await node.join(join)
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    task_status.started((node, scope))
                await trio.sleep_forever()


async def read_back(via: str, cid: str) -> bytes:
    async with open_tcp_transport(None, tls=client_credentials()) as transport:
        client = await DhtClient.via(transport, via)
        chunks: list[bytes] = []

        async def sink(data: bytes) -> None:
            chunks.append(data)

        await client.read(cid, sink)
        return b"".join(chunks)


async def test_publishes_into_a_ring_and_republishes_changes(nursery: trio.Nursery, site: Path) -> None:
    ring = StoringRing(nursery)
    first = await ring.start(None)
    for _ in range(2):
        await ring.start(first.me.address)
    await eventually(ring.consistent)
    via = first.me.address
    running = await start_origin(nursery, OriginConfig(site, rescan=0.1), via)
    origin = running.origin
    with trio.fail_after(20):
        await origin.wait_published()
    assert set(origin.published) == {"/" + str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as client:
        cid = (await client.head("/big.bin")).headers["x-content-cid"]
        assert origin.published["/big.bin"] == cid
        assert await read_back(via, cid) == BIG
        (site / "big.bin").write_bytes(BIG[::-1])
        new_cid = (await client.head("/big.bin")).headers["x-content-cid"]
    assert new_cid != cid
    await eventually(lambda: origin.published.get("/big.bin") == new_cid, timeout=20)
    assert await read_back(via, new_cid) == BIG[::-1]
    (site / "hello.txt").unlink()
    await eventually(lambda: "/hello.txt" not in origin.published, timeout=20)


# -- the command ---------------------------------------------------------------------------------


async def test_the_command_refuses_a_missing_root(tmp_path: Path) -> None:
    result = await chordcdn("origin", "--root", str(tmp_path / "nope"), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert b"no such directory" in result.stderr


async def test_the_command_serves_until_sigterm(site: Path) -> None:
    command = [CHORDCDN, "--log-level", "WARNING", "origin", "--root", str(site), "--listen", "127.0.0.1:0",
               "--cache-control", "/static/=no-cache"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        output = b""
        with trio.fail_after(15):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some(4096)  # type: ignore[union-attr]
                assert chunk, "origin exited before it was ready"
                output += chunk
        listening = re.search(r"listening on (127\.0\.0\.1:\d+)", output.decode())
        assert listening, output
        async with httpx.AsyncClient(base_url=f"http://{listening.group(1)}") as client:
            assert (await client.get("/hello.txt")).content == b"hello, origin\n"
            assert (await client.get("/static/app.js")).headers["cache-control"] == "no-cache"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
