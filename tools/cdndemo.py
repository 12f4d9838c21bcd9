"""`chordcdn demo`: a whole CDN on loopback in one process.

Owns the demo: a throwaway cluster CA with a certificate for every member (so the
demo runs the ring on mutual TLS, as a deployment would), a generated sample site,
an origin publishing it into a ring of storing nodes, and edges that know each
other, with the URLs and commands to try. It waits until the ring is consistent and the site is published, checks that
content flows through every tier, and runs until SIGTERM or Ctrl-C (or, with
`once`, stops after the check).
"""

from __future__ import annotations

import functools
import random
import tempfile
from pathlib import Path
from typing import Callable

import httpx
import trio

from dht.identity import Role
from dht.node import ChordNode, NodeConfig
from dht.tcp import open_tcp_transport
from edge.proxy import Edge, EdgeConfig
from origin.server import OriginConfig

from .cluster import LocalCluster
from .edgerun import run_edge
from .noderun import serve_local_node, settled_view, wait_for_signal
from .originrun import run_origin
from .ringwalk import ring_problems

Report = Callable[[str], None]
LARGE_FILE = 8 * 1024 * 1024


def write_sample_site(root: Path, seed: int = 7) -> dict[str, int]:
    """A small site with small and large files; returns path → size."""
    rng = random.Random(seed)
    files = {
        "index.html": b"<!doctype html><title>chordcdn</title><h1>Served by a chordcdn edge</h1>\n",
        "hello.txt": b"hello from the origin\n",
        "css/site.css": b"body { font-family: sans-serif; }\n" * 32,
        "img/pixel.bin": rng.randbytes(64 * 1024),
        "video/large.bin": rng.randbytes(LARGE_FILE),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {"/" + name: len(data) for name, data in files.items()}


async def run_cdn_demo(report: Report, nodes: int = 8, edges: int = 3, once: bool = False, site: Path | None = None) -> int:
    config = NodeConfig(stabilize_interval=0.5, fix_fingers_interval=0.25, check_predecessor_interval=0.5)
    with tempfile.TemporaryDirectory(prefix="chordcdn-demo-") as scratch:
        root = site or Path(scratch) / "site"
        files = write_sample_site(root) if site is None else {}
        pki = LocalCluster(Path(scratch) / "pki")
        report(f"cluster  a throwaway CA in {pki.directory}; every ring link is mutual TLS")
        async with open_tcp_transport(None, tls=pki.credentials("demo", Role.CLIENT)) as client, trio.open_nursery() as nursery:
            ring = await _start_ring(nursery, client, nodes, config, pki, report)
            origin_config = OriginConfig(root=root, cache_control=(("/video/", "public, max-age=3600"),))
            serve_origin = functools.partial(
                run_origin, origin_config, "127.0.0.1", 0, ring[0].me.address, ring_tls=pki.credentials("origin", Role.CLIENT)
            )
            running = await nursery.start(serve_origin)
            origin_url = f"http://127.0.0.1:{running.port}"
            report(f"origin   {origin_url} serving {root}; publishing into the ring…")
            with trio.fail_after(120):
                await running.origin.wait_published()
            report(f"published {len(running.origin.published)} files into the ring")
            cluster = await _start_edges(nursery, origin_url, ring, edges, Path(scratch), pki)
            ok = await _check(cluster, files or {p: 0 for p in running.origin.published}, report)
            _print_tryouts(report, cluster, running.origin.published, ring, pki)
            if not once:
                report("\nPress Ctrl-C to stop.")
                await wait_for_signal()
                report("stopping: nodes leave the ring")
                for node in ring:
                    with trio.move_on_after(5):
                        await node.leave()
            nursery.cancel_scope.cancel()
    return 0 if ok else 1


async def _start_ring(
    nursery: trio.Nursery, client: object, count: int, config: NodeConfig, pki: LocalCluster, report: Report
) -> list[ChordNode]:
    ring: list[ChordNode] = []
    for index in range(count):
        tls = pki.credentials(f"node-{index}", Role.NODE)
        serve = functools.partial(serve_local_node, ring[0].me.address if ring else None, config, tls=tls)
        ring.append(await nursery.start(serve))
    view = await settled_view(client, ring[0].me.address, trio.current_time() + 30)  # type: ignore[arg-type]
    problems = ring_problems(view)
    report(f"ring     {count} nodes, {'consistent' if not problems else 'NOT consistent: ' + '; '.join(problems)}")
    return ring


async def _start_edges(
    nursery: trio.Nursery, origin_url: str, ring: list[ChordNode], count: int, scratch: Path, pki: LocalCluster
) -> list[Edge]:
    cluster: list[Edge] = []
    for index in range(count):
        config = EdgeConfig(
            name=f"edge-{index}", origin=origin_url, dht=_contacts(ring, index),
            memory_budget=128 * 1024**2, disk_dir=str(scratch / f"edge-{index}"), disk_budget=512 * 1024**2,
        )
        reader = pki.credentials(f"edge-{index}", Role.READER)
        cluster.append(await nursery.start(functools.partial(run_edge, config, "127.0.0.1", 0, ring_tls=reader)))
    urls = {edge.config.name: f"http://127.0.0.1:{edge.port}" for edge in cluster}
    for edge in cluster:
        edge.set_peers(urls)
    return cluster


def _contacts(ring: list[ChordNode], index: int) -> tuple[str, ...]:
    """Edge `index`'s ring contacts: a node of its own first, then the next one to fail over to."""
    return tuple(ring[(index + offset) % len(ring)].me.address for offset in range(min(2, len(ring))))


async def _check(cluster: list[Edge], files: dict[str, int], report: Report) -> bool:
    """Fetch every file through the edges twice and report which tier answered."""
    ok = True
    async with httpx.AsyncClient(timeout=30) as http:
        for path, size in sorted(files.items()):
            for round_name, edge in (("cold", cluster[0]), ("again", cluster[-1])):
                response = await http.get(f"http://127.0.0.1:{edge.port}{path}")
                status = response.headers.get_list("cache-status")[-1] if "cache-status" in response.headers else "-"
                good = response.status_code == 200 and (not size or len(response.content) == size)
                ok &= good
                report(f"  {round_name:5} {edge.config.name} {path:18} {response.status_code} {len(response.content):>9} B  Cache-Status: {status}")
    return ok


def _print_tryouts(report: Report, cluster: list[Edge], published: dict[str, str], ring: list[ChordNode], pki: LocalCluster) -> None:
    base = f"http://127.0.0.1:{cluster[0].port}"
    report("\nEdges:")
    for edge in cluster:
        report(f"  {edge.config.name}  http://127.0.0.1:{edge.port}   (metrics: http://127.0.0.1:{edge.port}/metrics)")
    report("\nRing nodes: " + " ".join(node.me.address for node in ring))
    user = pki.files("you", Role.CLIENT)
    report(f"  export CHORDCDN_CERT={user.cert} CHORDCDN_KEY={user.key} CHORDCDN_CA={user.ca}")
    report(f"  chordcdn ring --via {ring[0].me.address} --check")
    cid = published.get("/video/large.bin") or next(iter(published.values()), "")
    report("\nTry:")
    report(f"  curl -si {base}/hello.txt                 # twice: fwd, then hit")
    report(f"  curl -s -o /dev/null -D - {base}/video/large.bin")
    report(f"  curl -s -D - -H 'Range: bytes=0-99' -o /dev/null {base}/video/large.bin")
    report(f"  curl -s -D - -H 'Range: bytes=0-9,-10' {base}/hello.txt")
    if cid:
        report(f"  curl -s -D - -o /dev/null {base}/cid/{cid}")
        report(f"  curl -s -D - -H 'Range: bytes=1000-1999' -o /dev/null {base}/cid/{cid}")
    report(f"  curl -s {base}/metrics | grep chordcdn_edge")
