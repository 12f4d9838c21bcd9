"""The CDN deployed across three hosts, each a Linux network namespace.

Three sites, each a namespace with its own address from 198.18.0.0/15 (RFC
2544's benchmark range) on a bridge the test makes (`tests/netns.py`). Each site
runs three ring nodes and an edge; site a also runs the origin. Every process is
started as a deployment would start it: `chordcdn` with a `--config` file and
certificates from `chordcdn cluster`. The test shows that

- the ring forms across the sites and passes `chordcdn ring --check`, and no
  node advertises a loopback or unspecified address (one node per site binds
  0.0.0.0 and advertises its site address);
- a file put in one site is fetched byte-exact through every site's edge;
- when site c is cut off for 60 s (its link taken down), both sides settle into
  consistent rings of their own, and once it is reconnected the two merge again:
  `ring --check` passes with all nine nodes, lookups through every site name the
  true owner of each key, and no block of the file is lost.

Needs root for the namespaces; elsewhere it is skipped with the reason. Takes
about two and a half minutes, 60 s of them the cut.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

import httpx
import pytest
import trio

from dht.identity import Role
from dht.ids import IdSpace
from dht.merkle import DagBuilder, DEFAULT_CHUNK, DEFAULT_FANOUT, block_hash
from dht.messages import LookupResult
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials, TlsFiles

from tools.cluster import LocalCluster

from . import netns
from .netns import Site, Topology
from .processes import CHORDCDN

NODE_PORTS = (7001, 7002, 7003)
ORIGIN_PORT, EDGE_PORT = 8000, 8080
NODE_SETTINGS: dict[str, Any] = {"replicas": 3, "stabilize-interval": 0.3, "rpc-timeout": 1.0, "repair-interval": 1.0}
CUT_SECONDS = 60.0  # the issue asks for 60 s of real time
FORM_TIMEOUT = 60.0  # seconds for the ring to form, or for one side of the cut to settle
# Seconds for the rings to merge after the reconnect. It took 25-55 s here: sites a
# and b keep calling site c over the TCP connections they opened before the cut,
# which stay in retransmission backoff (up to ~50 s after a 60 s cut) until the
# kernel retries them, and every call over them times out until then.
MERGE_TIMEOUT = 120.0
START_TIMEOUT = 60.0  # seconds for a process to print its ready line (13 start on two cores)
COMMAND_TIMEOUT = 60.0  # seconds for one client command
LOOKUP_KEYS = 20


# -- processes in sites --------------------------------------------------------------------------


@dataclass
class Service:
    """A long-running `chordcdn` process in a site: its ready line and its log."""

    name: str
    site: Site
    process: trio.Process
    ready: str
    log: Path


@dataclass
class Deployment:
    """The CDN's files and processes: the cluster directory, config files, logs.
    `deployment()` kills every process started through it on the way out."""

    topology: Topology
    root: Path
    services: list[Service] = field(default_factory=list)

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    def credentials(self, name: str, prefix: str = "") -> dict[str, str]:
        """Config-file keys naming NAME's certificate, key and the cluster CA."""
        return {f"{prefix}cert": str(self.cluster / f"{name}.crt"), f"{prefix}key": str(self.cluster / f"{name}.key"),
                f"{prefix}ca": str(self.cluster / "ca.crt")}

    def tls(self, name: str) -> TlsCredentials:
        """NAME's credentials, for calls from the test process itself."""
        files = self.credentials(name)
        return TlsCredentials(TlsFiles.of(files["cert"], files["key"], files["ca"]), IdSpace())

    def client_environment(self) -> dict[str, str]:
        """The operator's client certificate, as client commands read it from the environment."""
        files = self.credentials("operator")
        return {**os.environ, "CHORDCDN_CERT": files["cert"], "CHORDCDN_KEY": files["key"], "CHORDCDN_CA": files["ca"]}

    async def run(self, site: Site | None, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
        """One `chordcdn` command, inside SITE's namespace (None: the test's own), as the operator."""
        command = [CHORDCDN, *args] if site is None else site.command([CHORDCDN, *args])
        with trio.fail_after(timeout):
            return await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False, env=self.client_environment()
            )

    async def start(self, site: Site, name: str, role: str, config: dict[str, Any]) -> Service:
        """Write NAME's config file and run `chordcdn ROLE --config FILE` in SITE until it says it listens."""
        path = self.root / "config" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(toml(config))
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as stderr:
            command = site.command([CHORDCDN, "--log-level", "INFO", role, "--config", str(path)])
            process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=stderr)
        service = Service(name, site, process, "", log)
        self.services.append(service)
        output = b""
        with trio.fail_after(START_TIMEOUT):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some(4096)  # type: ignore[union-attr]
                assert chunk, f"{name} exited before it was ready: {output!r}\n{tail(log)}"
                output += chunk
        service.ready = output.decode().splitlines()[0]
        assert "listening on" in service.ready, service.ready
        return service

    async def stop_all(self) -> None:
        for service in self.services:
            if service.process.returncode is None:
                service.process.kill()
        with trio.move_on_after(10):
            for service in self.services:
                await service.process.wait()

    def report(self) -> str:
        """Every process's ready line and the end of its log, for a failure."""
        return "\n".join(
            f"== {s.name} in site {s.site.letter} (exit {s.process.returncode}): {s.ready}\n{tail(s.log)}" for s in self.services
        )


@asynccontextmanager
async def deployment(topology: Topology, root: Path) -> AsyncIterator[Deployment]:
    """A Deployment whose processes are killed on exit; after a failure their logs are
    printed (pytest shows them with the failure)."""
    cdn = Deployment(topology, root)
    try:
        yield cdn
    except BaseException:
        print(cdn.report())
        raise
    finally:
        with trio.CancelScope(shield=True):
            await cdn.stop_all()


def toml(values: dict[str, Any]) -> str:
    """A flat TOML file: strings, numbers and arrays of strings (JSON spells them as TOML does)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the cluster's pieces --------------------------------------------------------------------------


def node_address(site: Site, index: int) -> str:
    return f"{site.address}:{NODE_PORTS[index]}"


def node_name(site: Site, index: int) -> str:
    return f"node-{site.letter}{index + 1}"


def all_nodes(sites: Sequence[Site]) -> list[tuple[Site, int]]:
    return [(site, index) for site in sites for index in range(len(NODE_PORTS))]


async def make_certificates(cdn: Deployment) -> None:
    """The deployment recipe: `chordcdn cluster init`, then `chordcdn cluster issue` for
    every node, recording its site address. The operator's, the origin's, the edges'
    and the auditor's certificates come from the same CA through `LocalCluster`, which
    writes the same files in-process (each command costs a second of CPU)."""
    init = await cdn.run(None, "cluster", "init", str(cdn.cluster))
    assert init.returncode == 0, init.stderr
    limiter = trio.CapacityLimiter(2)  # two cores

    async def issue(name: str, address: str) -> None:
        async with limiter:
            result = await cdn.run(
                None, "cluster", "issue", str(cdn.cluster), "--role", "node", "--name", name, "--address", address
            )
        assert result.returncode == 0, result.stderr

    async with trio.open_nursery() as nursery:
        for site, index in all_nodes(cdn.topology.sites):
            nursery.start_soon(issue, node_name(site, index), site.address)
    others = LocalCluster(cdn.cluster)
    for name, role in [("operator", Role.CLIENT), ("origin", Role.CLIENT), ("auditor", Role.NODE)]:
        others.files(name, role)
    for site in cdn.topology.sites:
        others.files(f"edge-{site.letter}", Role.READER)


def node_config(cdn: Deployment, site: Site, index: int) -> dict[str, Any]:
    """Node 1 of each site binds every interface and advertises the site address;
    the others bind the site address itself. All join through node 1 of site a."""
    first = cdn.topology.sites[0]
    listen = f"0.0.0.0:{NODE_PORTS[index]}" if index == 0 else node_address(site, index)
    config: dict[str, Any] = {"listen": listen, "data": str(cdn.root / "data" / node_name(site, index)), **NODE_SETTINGS}
    if index == 0:
        config["advertise"] = node_address(site, index)
    if (site, index) != (first, 0):
        config["join"] = node_address(first, 0)
    return {**config, **cdn.credentials(node_name(site, index))}


async def start_ring(cdn: Deployment) -> None:
    """Site a's first node founds the ring; the other eight join it at once. Each
    says it listens on its site address, even those bound to 0.0.0.0."""

    async def start(site: Site, index: int) -> None:
        node = await cdn.start(site, node_name(site, index), "node", node_config(cdn, site, index))
        assert f" listening on {node_address(site, index)}" in node.ready, node.ready

    sites = cdn.topology.sites
    await start(sites[0], 0)
    async with trio.open_nursery() as nursery:
        for site, index in all_nodes(sites)[1:]:
            nursery.start_soon(start, site, index)


async def start_origin_and_edges(cdn: Deployment, document_root: Path) -> None:
    """The origin in site a, publishing through a site-a node; an edge in every site,
    reading the ring through a node of its own site."""
    sites = cdn.topology.sites
    origin_url = f"http://{sites[0].address}:{ORIGIN_PORT}"
    await cdn.start(sites[0], "origin", "origin", {
        "root": str(document_root), "listen": f"{sites[0].address}:{ORIGIN_PORT}", "dht": node_address(sites[0], 0),
        "rescan": 5, "cache-control": ["/=public, max-age=60"], **cdn.credentials("origin", "ring-"),
    })
    peers = ",".join(f"edge-{site.letter}=http://{site.address}:{EDGE_PORT}" for site in sites)
    async with trio.open_nursery() as nursery:
        for site in sites:
            nursery.start_soon(cdn.start, site, f"edge-{site.letter}", "edge", {
                "listen": f"{site.address}:{EDGE_PORT}", "name": f"edge-{site.letter}", "origin": origin_url,
                "dht": node_address(site, 1), "peers": peers, "mem-cache": "64MiB",
                **cdn.credentials(f"edge-{site.letter}", "ring-"),
            })


# -- looking at the ring -----------------------------------------------------------------------------


async def ring_view(cdn: Deployment, site: Site, via: str) -> dict[str, Any] | None:
    """`chordcdn ring --via VIA --check --json` run in SITE; None when VIA does not answer."""
    result = await cdn.run(site, "ring", "--via", via, "--check", "--json")
    if result.returncode not in (0, 1) or not result.stdout:
        return None
    view = json.loads(result.stdout)
    assert view["consistent"] == (result.returncode == 0), view  # --check agrees with the JSON
    return view


async def wait_for_ring(cdn: Deployment, site: Site, via: str, members: set[str], timeout: float) -> dict[str, Any]:
    """Poll `ring --check` (in SITE, via VIA) until it passes with exactly the nodes at
    MEMBERS; AssertionError with the last view when `timeout` passes first."""
    last: dict[str, Any] | None = None
    with trio.move_on_after(timeout):
        while True:
            last = await ring_view(cdn, site, via)
            if last is not None and last["consistent"] and {node["address"] for node in last["nodes"]} == members:
                return last
            await trio.sleep(0.5)
    found = sorted(node["address"] for node in last["nodes"]) if last else "no answer"
    problems = last["problems"] if last else []
    raise AssertionError(f"ring via {via} not consistent with {sorted(members)} within {timeout:.0f} s: {found}; {problems}")


def assert_advertised_properly(view: dict[str, Any], sites: Sequence[Site]) -> None:
    """Every node's address is its site's address: none is loopback or unspecified."""
    site_addresses = {site.address for site in sites}
    for node in view["nodes"]:
        host = node["address"].rpartition(":")[0]
        address = ipaddress.ip_address(host)
        assert not address.is_loopback and not address.is_unspecified, node["address"]
        assert host in site_addresses, node["address"]


def owner_of(key: int, ids: list[int]) -> int:
    """The true owner of KEY: the first node ID at or after it, around the circle."""
    ordered = sorted(ids)
    return next((ident for ident in ordered if ident >= key), ordered[0])


def file_blocks(content: bytes) -> tuple[str, set[bytes]]:
    """The CID `chordcdn put` gives CONTENT, and the keys of every block of its Merkle DAG."""
    builder = DagBuilder(DEFAULT_CHUNK, DEFAULT_FANOUT)
    chunks = [content[start : start + DEFAULT_CHUNK] for start in range(0, len(content), DEFAULT_CHUNK)]
    blocks = [block for chunk in chunks for block in builder.add_chunk(chunk)]
    rest, root = builder.finish()
    return root.hex(), {block_hash(block) for block in blocks + rest}


async def check_lookups(client: Any, sites: Sequence[Site], ids: list[int]) -> None:
    """LOOKUP_KEYS keys, each looked up through a node of every site: all name the true owner."""
    space = IdSpace()
    keys = [random.Random(seed).randrange(space.size) for seed in range(LOOKUP_KEYS)]
    wrong = []
    for number, key in enumerate(keys):
        for site in sites:
            via = node_address(site, number % len(NODE_PORTS))
            result = LookupResult.from_wire(await client.call(via, "lookup", [key], timeout=15), space)
            if result.owner.id != owner_of(key, ids):
                wrong.append(f"{key:064x} via {via}: {result.owner.address}, should be {owner_of(key, ids):064x}")
    assert not wrong, "\n".join(wrong)


async def block_holders(client: Any, addresses: Sequence[str]) -> dict[bytes, list[str]]:
    """Which nodes hold which block keys, by each node's own list (`list_keys` over the whole circle)."""
    holders: dict[bytes, list[str]] = {}
    for address in addresses:
        for key in await client.call(address, "list_keys", [0, 0], timeout=10):
            holders.setdefault(key, []).append(address)
    return holders


# -- the test -------------------------------------------------------------------------------------------


@pytest.fixture
def topology() -> Iterator[Topology]:
    """Three sites on a bridge, removed afterwards; a skip saying why where namespaces
    cannot be made. (A sync fixture: pytest-trio drops the reason of a skip raised
    inside a trio test.)"""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.sites(3) as made:
        yield made


async def test_ring_spans_three_sites_and_heals_after_one_is_cut_off(topology: Topology, tmp_path: Path) -> None:
    document_root = tmp_path / "www"
    document_root.mkdir()
    page = random.Random(1).randbytes(300_000)
    (document_root / "page.bin").write_bytes(page)
    upload = tmp_path / "upload.bin"
    content = random.Random(2).randbytes(6 * DEFAULT_CHUNK + 12_345)
    upload.write_bytes(content)
    cid, keys = file_blocks(content)

    a, b, c = sites = topology.sites
    every_node = {node_address(site, i) for site, i in all_nodes(sites)}
    async with deployment(topology, tmp_path) as cdn:
        # the ring forms across the sites, every node at its site's address
        await make_certificates(cdn)
        await start_ring(cdn)
        view = await wait_for_ring(cdn, b, node_address(a, 0), every_node, FORM_TIMEOUT)
        assert_advertised_properly(view, sites)
        ids = [int(node["id"], 16) for node in view["nodes"]]
        await start_origin_and_edges(cdn, document_root)

        # a file put in site b, read through every site's edge
        put = await cdn.run(b, "put", str(upload), "--via", node_address(b, 2), "--json")
        assert put.returncode == 0, put.stderr
        assert json.loads(put.stdout)["cid"] == cid
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            for site in sites:
                response = await http.get(f"http://{site.address}:{EDGE_PORT}/cid/{cid}")
                assert response.status_code == 200 and response.content == content, (site.letter, response.status_code)
                response = await http.get(f"http://{site.address}:{EDGE_PORT}/page.bin")
                assert response.status_code == 200 and response.content == page, (site.letter, response.status_code)

        c.cut()  # site c is cut off for 60 s
        cut_ends = trio.current_time() + CUT_SECONDS
        sides = {node_address(site, i) for site, i in all_nodes([a, b])}
        async with trio.open_nursery() as nursery:  # while cut off, each side settles into a ring of its own
            left = cut_ends - trio.current_time()
            nursery.start_soon(wait_for_ring, cdn, a, node_address(a, 0), sides, left)
            nursery.start_soon(wait_for_ring, cdn, c, node_address(c, 0), every_node - sides, left)
        await trio.sleep_until(cut_ends)
        c.reconnect()

        # the two rings merge; every lookup is right and every block is still there
        view = await wait_for_ring(cdn, a, node_address(a, 0), every_node, MERGE_TIMEOUT)
        assert_advertised_properly(view, sites)
        assert sorted(int(node["id"], 16) for node in view["nodes"]) == sorted(ids)
        assert all(service.process.returncode is None for service in cdn.services)  # nothing restarted or died
        await wait_for_ring(cdn, c, node_address(c, 2), every_node, FORM_TIMEOUT)

        async with open_tcp_transport(None, tls=cdn.tls("auditor")) as client:
            await check_lookups(client, sites, ids)
            holders = await block_holders(client, sorted(every_node))
        lost = sorted(key.hex() for key in keys if not holders.get(key))
        assert not lost, f"blocks with no holder after the cut: {lost}"
        for site in sites:  # the CLI's lookup, and the whole file read through every site
            owner = await cdn.run(site, "lookup", cid, "--via", node_address(site, 2), "--json")
            assert owner.returncode == 0, owner.stderr
            assert int(json.loads(owner.stdout)["owner"]["id"], 16) == owner_of(int(cid, 16), ids)
            target = tmp_path / f"got-{site.letter}.bin"
            got = await cdn.run(site, "get", cid, "--via", node_address(site, 0), "-o", str(target))
            assert got.returncode == 0, got.stderr
            assert target.read_bytes() == content, site.letter
