"""Attacks on stored data, made again against real `chordcdn node` processes (and
once on a simulated ring), each counted block by block afterwards: every honest
node's keys are listed (`list_keys` over the whole circle, with a node
certificate) and matched against the block keys of each file, built here from its
bytes.

What the passing tests show:

1. Remote deletion of an arc's replicas. (a) An outsider gets nowhere: without a
   cluster certificate, or with another cluster's, no connection completes; with a
   client certificate every ring call that names node IDs or moves copies is
   Forbidden; nothing is dropped or stored. (b) An insider, a process in this test
   holding a real node certificate (its ID is the hash of its key), joins the ring
   and lies in every way it can: random or relayed possession proofs, put_block
   acknowledged but not stored, digests and key lists claiming every block it was
   offered, step answers and successor lists naming forged IDs (just below its
   victim, at its own address, at an unused port and at a port that never answers),
   forged notify / consider_successor claims, and leave notices naming forged
   nodes. Through ~10 s of 1-second repair rounds, at every sample and at the end,
   each block keeps at least r−1 honest copies, and every file reads back.
2. `chordcdn put` while that insider is in the ring either fails with a clear
   message or really stores the file on honest nodes.
3. Junk: without a certificate nothing is stored (`info` store.used unchanged);
   with `--capacity`, a full ring makes `chordcdn put` exit 1 with "node full",
   no store goes past its capacity, nothing already stored is lost, and repair
   onto full nodes after one is killed neither crashes nor stalls the ring.
4. Crash safety: SIGKILL and restart (same certificate, same --data) in the middle
   of a stream of `chordcdn put`s; every acknowledged file reads back byte-exact.
5. Simulated (MockClock): a storage node that claims blocks it does not hold and
   answers every possession challenge wrongly, across ~50 repair rounds with joins
   and leaves: no block loses its last copy, the honest nodes count the wrong
   proofs (proofs_failed), and r−1 honest copies remain.

Regression tests for the library bugs these attacks found (all fixed): an insider
naming itself r times in its step answers passed for a whole replica set, so
honest holders dropped their copies (with a forged predecessor_leaving
replacement, every copy: the original attack 1, by an insider); a client took a
replica set shorter than r, or one node named r times, for enough
acknowledgements (`chordcdn put` exited 0 with blocks on no honest node); and an
outsider without a certificate stopped a node by resetting connections before the
TLS handshake (taking in-memory blocks with it).
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
import secrets
import signal
import socket
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import trio
from trio.testing import MockClock

from dht import messages
from dht.blockstore import MemoryBlockStore
from dht.client import DhtClient, PutFailed
from dht.errors import ChordError, RemoteError, TransportError
from dht.identity import Role
from dht.ids import IdSpace, in_half_open
from dht.merkle import DEFAULT_FANOUT, MAX_BLOCK, DagBuilder, block_hash, possession_proof
from dht.messages import LookupResult, NodeInfo
from dht.node import ChordNode, NodeConfig
from dht.routing import NodeRef, refs_to_wire
from dht.simcluster import SimCluster
from dht.storage import StorageConfig
from dht.tcp import TcpTransport, open_tcp_transport
from dht.tls import TlsCredentials
from dht.wire import encode_request
from tools.cluster import LocalCluster
from tools.ringwalk import ring_problems, walk

from .attackkit import LoggedNode, RawConnection, client_context, start_logged_node, stop_all
from .conftest import ClusterFactory
from .processes import check_passes_within, chordcdn, pki

R = 3
KIB, MIB = 1024, 1024 * 1024
CHUNK, FANOUT = 16 * KIB, 16  # small blocks, so every file spreads over every arc
STORE_FLAGS = ["--replicas", str(R), "--repair-interval", "1"]
WAIT = 10.0
SUCCESSORS = 8  # the nodes' successor list length (the default)
ATTACK_SECONDS = 10.0
LIAR_CONFIG = NodeConfig.every(0.2, rpc_timeout=0.5)
_serial = itertools.count()


# -- files and their blocks ------------------------------------------------------------------


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def dag_keys(data: bytes, chunk: int = CHUNK, fanout: int = FANOUT) -> tuple[str, set[bytes]]:
    """The CID and every block key of a file, built here (not asked of any node)."""
    builder, blocks = DagBuilder(chunk, fanout), []
    for offset in range(0, len(data), chunk):
        blocks += builder.add_chunk(data[offset : offset + chunk])
    rest, root = builder.finish()
    blocks += rest
    keys = {block_hash(block) for block in blocks}
    assert root in keys
    return root.hex(), keys


def put_command_keys(data: bytes) -> tuple[str, set[bytes]]:
    """As dag_keys, for a file stored by `chordcdn put --chunk-size CHUNK` (default fanout)."""
    return dag_keys(data, CHUNK, DEFAULT_FANOUT)


@dataclass
class StoredFile:
    data: bytes
    cid: str
    keys: set[bytes]


# -- rings of node processes ---------------------------------------------------------------


@asynccontextmanager
async def node_ring(logs: Path, count: int, *flags: str, data: Path | None = None) -> AsyncIterator[list[LoggedNode]]:
    """`count` storing node processes (the first founds the ring, the others join
    it at once); every process in the list, restarts included, is killed at the end."""
    nodes: list[LoggedNode] = []

    def node_flags(index: int) -> list[str]:
        return [*STORE_FLAGS, *flags, *(["--data", str(data / f"node{index}")] if data else [])]

    try:
        nodes.append(await start_logged_node(logs, None, *node_flags(0)))

        async def join(index: int) -> None:
            nodes.append(await start_logged_node(logs, nodes[0].address, *node_flags(index)))

        async with trio.open_nursery() as nursery:
            for index in range(1, count):
                nursery.start_soon(join, index)
        yield nodes
    finally:
        await stop_all(nodes)


class Observer:
    """Looks at the ring from this process: a client certificate to put and read
    files, a node certificate (not in the ring) to list the keys a node holds."""

    def __init__(self, client: TcpTransport, auditor: TcpTransport) -> None:
        self.client, self.auditor = client, auditor

    async def info(self, address: str) -> NodeInfo:
        return NodeInfo.from_wire(await self.client.call(address, "info", [], timeout=WAIT))

    async def keys_on(self, address: str) -> set[bytes]:
        """Every key the node holds: list_keys over the whole circle, arc (0, 0]."""
        return set(messages.keys_reply(await self.auditor.call(address, "list_keys", [0, 0], timeout=WAIT)))

    async def copies(self, addresses: list[str], keys: set[bytes]) -> dict[bytes, int]:
        """How many of the nodes at `addresses` hold each key, listed at the same moment."""
        held: dict[str, set[bytes]] = {}

        async def list_one(address: str) -> None:
            held[address] = await self.keys_on(address)

        async with trio.open_nursery() as nursery:
            for address in addresses:
                nursery.start_soon(list_one, address)
        return {key: sum(key in keys_here for keys_here in held.values()) for key in keys}

    async def settled(self, addresses: list[str], keys: set[bytes], timeout: float = 20.0) -> None:
        """Poll until the nodes hold exactly r copies of each key and nothing else:
        repair has nothing left to move."""
        with trio.fail_after(timeout):
            while True:
                held = [await self.keys_on(address) for address in addresses]
                if all(len(keys_here) == len(keys_here & keys) for keys_here in held) and all(
                    sum(key in keys_here for keys_here in held) == R for key in keys
                ):
                    return
                await trio.sleep(0.2)

    async def consistent(self, via: str, count: int, timeout: float = 20.0) -> None:
        """Poll, as `chordcdn ring --check` does, until `count` nodes form a consistent
        ring, each with a full successor list (every other node, in a small ring)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    view = await walk(self.client, via)
                    full = all(len(info.successors) >= min(SUCCESSORS, count - 1) for info in view.nodes)
                    if len(view.nodes) == count and full and not ring_problems(view):
                        return
                except ChordError:
                    pass
                await trio.sleep(0.2)

    async def put(self, via: str, data: bytes) -> StoredFile:
        with trio.fail_after(30):
            client = await DhtClient.via(self.client, via)
            cid = await client.put_file(io.BytesIO(data), CHUNK, FANOUT)
        expected, keys = dag_keys(data)
        assert cid == expected
        return StoredFile(data, cid, keys)

    async def read(self, via: str, cid: str) -> bytes:
        """The file, every block verified against its hash (as `chordcdn get` does)."""
        out = bytearray()

        async def sink(data: bytes) -> None:
            out.extend(data)

        with trio.fail_after(30):
            client = await DhtClient.via(self.client, via)
            await client.read(cid, sink)
        return bytes(out)


@asynccontextmanager
async def observer() -> AsyncIterator[Observer]:
    client_tls = pki().credentials("data-attack-client", Role.CLIENT)
    auditor_tls = pki().credentials("data-attack-auditor", Role.NODE)
    async with open_tcp_transport(None, tls=client_tls) as client, open_tcp_transport(None, tls=auditor_tls) as auditor:
        yield Observer(client, auditor)


async def get_command(cid: str, via: str) -> bytes:
    result = await chordcdn("get", cid, "--via", via)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


async def get_and_compare(cid: str, via: str, expected: bytes) -> None:
    assert await get_command(cid, via) == expected, f"{cid} came back different"


def assert_no_tracebacks(nodes: list[LoggedNode]) -> None:
    """No node logged an unexpected exception (a bug, not an attacker's doing)."""
    for node in nodes:
        entries = re.split(r"\n(?=\d{4}-\d\d-\d\d )", node.log_text())
        unexpected = [entry for entry in entries if "Traceback" in entry]
        assert not unexpected, f"{node.address} logged a traceback:\n{unexpected[0][:3000]}"


# -- addresses nobody can prove an ID at -----------------------------------------------------------


def unused_address() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def serve_silence(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """A port that accepts connections and never answers (not even the TLS handshake)."""

    async def swallow(stream: trio.SocketStream) -> None:
        with trio.move_on_after(30):
            while await stream.receive_some(65536):
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, swallow, listeners)
        task_status.started(f"127.0.0.1:{port}")
        await trio.sleep_forever()


# -- the insider --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lies:
    """Which lies a LyingNode tells besides the storage ones it always tells
    (acknowledging puts it drops, claiming in digests and list_keys every block it
    was offered, answering prove_blocks with random bytes or relayed proofs)."""

    posing: int = 0  # > 0: every step answer names the liar itself this many times; 0: itself and forged IDs
    poison: bool = True  # forged successor lists in notify replies and successor_leaving; forged notify claims
    displace: bool = True  # predecessor_leaving to its successor naming a forged replacement predecessor
    random_proofs: bool = True  # every other prove_blocks answer is random bytes (else always relayed)


EVERY_LIE = Lies()
POSING = Lies(posing=R, poison=False, random_proofs=False)  # only what deletion needs


class LyingNode(ChordNode):
    """A ring member with a real node certificate that lies wherever it can.

    It stores nothing but acknowledges every put_block; claims in digests and
    list_keys to hold every block it was offered; answers prove_blocks with random
    bytes or with proofs relayed from the block fetched off an honest node; and,
    as `lies` says, names forged IDs (just below its successor, the victim, at its
    own address, an unused port and a port that never answers) in step answers and
    successor lists, claims forged IDs in notify and consider_successor to every
    node it knows, and sends leave notices naming forged nodes."""

    def __init__(self, transport: TcpTransport, blackhole: str, lies: Lies) -> None:
        super().__init__(transport, LIAR_CONFIG)
        self.lies = lies
        self.fakes = [self.me.address, unused_address(), blackhole]
        self.blackhole = blackhole
        self.claims: dict[bytes, int] = {}  # acknowledged, never stored: key → ring position
        self.acknowledged = 0  # put_block calls acknowledged
        self.steps = 0  # routing steps answered with a lie
        self.refused = 0  # forged claims the honest nodes refused
        self.accepted: list[str] = []  # forged claims an honest node took: must stay empty
        self.challenges = 0  # prove_blocks calls answered (alternately random and relayed)
        for method, handler in {
            "put_block": self._on_put_block,
            "get_block": lambda caller, args: None,
            "prove_blocks": self._on_prove_blocks,
            "digests": self._on_digests,
            "list_keys": self._on_list_keys,
        }.items():
            self.register(method, handler)

    def forged(self, below: NodeRef, count: int) -> list[NodeRef]:
        """IDs just below `below`, at addresses where nobody can prove them."""
        return [NodeRef((below.id - 1 - index) % self.space.size, self.fakes[index % 3]) for index in range(count)]

    # -- lies in answers ----------------------------------------------------------------

    def _on_step(self, caller: Any, args: list[Any]) -> list[Any]:
        messages.step_args(args, self.space)
        self.steps += 1
        if self.lies.posing:
            return ["owner", refs_to_wire([self.me] * self.lies.posing)]
        return ["owner", refs_to_wire([self.me, *self.forged(self.routing.successor, R - 1)])]

    def _on_notify(self, caller: Any, args: list[Any]) -> list[Any]:
        predecessor, successors = super()._on_notify(caller, args)
        if self.lies.poison:
            successors = refs_to_wire(self.forged(self.routing.successor, 4))
        return [predecessor, successors]

    def _on_put_block(self, caller: Any, args: list[Any]) -> bool:
        key, _ = messages.put_args(args, MAX_BLOCK)
        self.claims[key] = self.space.position(key)
        self.acknowledged += 1
        return True

    def _claimed_in(self, lo: int, hi: int) -> list[bytes]:
        return sorted(key for key, position in self.claims.items() if lo == hi or in_half_open(position, lo, hi))

    def _on_digests(self, caller: Any, args: list[Any]) -> list[list[int]]:
        lo, hi, parts = messages.digests_args(args, self.space)
        digests = []
        for a, b in self.space.split_arc(lo, hi, parts):
            keys = self._claimed_in(a, b)
            xor = 0
            for key in keys:
                xor ^= int.from_bytes(key, "big")
            digests.append([len(keys), xor])
        return digests

    def _on_list_keys(self, caller: Any, args: list[Any]) -> list[bytes]:
        lo, hi = messages.arc_args(messages.arguments(args, 2, "list_keys"), self.space, "list_keys")
        return self._claimed_in(lo, hi)[: messages.MAX_LISTED_KEYS]

    async def _on_prove_blocks(self, caller: Any, args: list[Any]) -> list[bytes | None]:
        nonce, keys = messages.prove_args(args)
        self.challenges += 1
        if self.lies.random_proofs and self.challenges % 2:
            return [secrets.token_bytes(32) for _ in keys]
        return [await self._relayed_proof(nonce, key) for key in keys]

    async def _relayed_proof(self, nonce: bytes, key: bytes) -> bytes:
        """A correct proof for a block we do not keep: fetch it from whoever has it."""
        for node in self.routing.known_nodes():
            try:
                data = messages.block_reply(await self.call(node, "get_block", key))
            except (TransportError, RemoteError):
                continue
            if data is not None:
                return possession_proof(nonce, data)
        return secrets.token_bytes(32)

    # -- lies in calls ----------------------------------------------------------------------

    async def harass(self) -> None:
        """Over and over: forged claims to every node we know; leave notices naming
        forged nodes to our neighbours (notifying them again first, so that each
        notice is taken)."""
        while True:
            await trio.sleep(0.2)
            if self.lies.poison:
                for node in self.routing.known_nodes():
                    forged = self.forged(node, 1)[0].to_wire()
                    for method in ("notify", "consider_successor"):
                        await self._forged_claim(node, method, forged)
            successor, predecessor = self.routing.successor, self.routing.predecessor
            if self.lies.displace and successor.id != self.me.id:
                replacement = NodeRef((successor.id - 1) % self.space.size, self.blackhole)
                await self._quietly(successor, "notify", self.me.to_wire())
                await self._quietly(successor, "predecessor_leaving", self.me.to_wire(), replacement.to_wire())
            if self.lies.poison and predecessor is not None:
                await self._quietly(predecessor, "successor_leaving", self.me.to_wire(), refs_to_wire(self.forged(successor, 4)))
                await self._quietly(predecessor, "notify", self.me.to_wire())

    async def _forged_claim(self, node: NodeRef, method: str, forged: list[Any]) -> None:
        try:
            await self.call(node, method, forged)
        except RemoteError as exc:
            self.refused += exc.kind == "Forbidden"
            return
        except TransportError:
            return
        self.accepted.append(f"{method} naming {forged} accepted by {node.address}")

    async def _quietly(self, node: NodeRef, method: str, *args: Any) -> None:
        try:
            await self.call(node, method, *args)
        except (TransportError, RemoteError):
            pass


Liar = tuple[LyingNode, trio.CancelScope]


def insider_credentials(honest_ids: list[int]) -> TlsCredentials:
    """A node certificate for the liar. Its ID is the hash of its key, so it cannot
    be chosen; but of a few drawn, take one early in the widest gap between the
    honest nodes, so that the arc the liar's lies are about (its successor's) holds
    many blocks whatever IDs the honest nodes drew."""
    space = IdSpace()
    ids = sorted(honest_ids)
    width, start = max((space.distance(a, b) or space.size, a) for a, b in zip(ids, ids[1:] + ids[:1]))
    for _ in range(300):
        credentials = pki().credentials(f"data-liar-{next(_serial)}", Role.NODE)
        assert credentials.node_id is not None
        if 0 < space.distance(start, credentials.node_id) < width // 4:
            return credentials
    raise AssertionError("no certificate drawn fell early in the widest gap")


async def start_liar(nursery: trio.Nursery, look: Observer, honest: list[str], lies: Lies) -> Liar:
    """A lying node joined to the ring through honest[0]; cancel its scope to stop it."""
    ids = [(await look.info(address)).me.id for address in honest]
    return await nursery.start(run_liar, honest[0], lies, insider_credentials(ids))


async def run_liar(
    join: str, lies: Lies, credentials: TlsCredentials, *, task_status: trio.TaskStatus[Liar] = trio.TASK_STATUS_IGNORED
) -> None:
    """Join the ring as a lying node and lie until the scope it hands back is
    cancelled; then it vanishes, as a crashed node does."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            blackhole = await nursery.start(serve_silence)
            async with open_tcp_transport("127.0.0.1", 0, tls=credentials) as transport:
                liar = LyingNode(transport, blackhole, lies)
                await liar.join(join)
                nursery.start_soon(liar.run)
                nursery.start_soon(liar.harass)
                task_status.started((liar, scope))
                await trio.sleep_forever()


async def watch_copies(observer: Observer, honest: list[str], keys: set[bytes], seconds: float, stop_below: int) -> list[int]:
    """Sample the honest copies of every block for `seconds` (stopping early at a
    sample where some block has fewer than `stop_below`); the minimum of each sample."""
    lows: list[int] = []
    with trio.move_on_after(seconds):
        while not lows or lows[-1] >= stop_below:
            lows.append(min((await observer.copies(honest, keys)).values()))
            await trio.sleep(0.3)
    return lows


async def stop_liar(observer: Observer, scope: trio.CancelScope, nodes: list[LoggedNode]) -> None:
    """The liar vanishes; wait until the honest nodes alone form a consistent ring."""
    scope.cancel()
    await observer.consistent(nodes[0].address, len(nodes), timeout=30)


async def in_background(nursery: trio.Nursery, work: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """Start `work`; the returned coroutine function waits for its result."""
    done, result = trio.Event(), []

    async def run() -> None:
        result.append(await work())
        done.set()

    nursery.start_soon(run)

    async def wait() -> Any:
        with trio.fail_after(60):
            await done.wait()
        return result[0]

    return wait


# -- 1. remote deletion -----------------------------------------------------------------------


async def test_outsiders_cannot_store_drop_or_forge(tmp_path: Path) -> None:
    """Attack 1(a) and 3(a): no certificate, another cluster's certificate, and a
    client certificate naming forged IDs. Nothing is stored, dropped or believed."""
    async with node_ring(tmp_path, 4) as nodes, observer() as look:
        addresses = [node.address for node in nodes]
        await look.consistent(addresses[0], 4)
        stored = await look.put(addresses[1], content(300 * KIB, 1))
        await look.settled(addresses, stored.keys)
        used = {address: (await look.info(address)).store["used"] for address in addresses}
        junk = content(64 * KIB, 2)
        put_junk = encode_request(1, "put_block", [block_hash(junk), junk])

        def without_certificate(address: str) -> None:
            for context in (client_context(None, verify_server=False), None):  # TLS without a certificate, plaintext
                with RawConnection.open(address, context) as connection:
                    connection.send(put_junk)
                    assert connection.drain() == [], "a put without a certificate got an answer"

        for address in addresses:
            await trio.to_thread.run_sync(without_certificate, address)
        foreign = LocalCluster(tmp_path / "other-cluster")  # a node certificate from another CA
        async with open_tcp_transport(None, tls=foreign.credentials("impostor", Role.NODE)) as impostor:
            for address in addresses:
                with pytest.raises(TransportError, match="handshake"):
                    await impostor.call(address, "put_block", [block_hash(junk), junk], timeout=WAIT)
        # A client certificate: puts and proofs of possession are allowed, but nothing that moves
        # copies or names ring nodes.
        victim = await look.info(addresses[2])
        forged = NodeRef(victim.me.id - 1, addresses[3]).to_wire()
        ring_calls = {
            "notify": [forged],
            "consider_successor": [forged],
            "predecessor_leaving": [forged, forged],
            "successor_leaving": [forged, [forged]],
            "list_keys": [0, 0],
            "digests": [0, 0, 4],
        }
        for address in addresses:
            for method, args in ring_calls.items():
                with pytest.raises(RemoteError, match="Forbidden") as refused:
                    await look.client.call(address, method, args, timeout=WAIT)
                assert "needs a node certificate" in refused.value.message
        with trio.move_on_after(3):  # three repair rounds after the forged claims: nothing moves
            while True:
                assert {address: (await look.info(address)).store["used"] for address in addresses} == used
                await trio.sleep(0.3)
        counts = await look.copies(addresses, stored.keys)
        assert min(counts.values()) == R, counts
        assert block_hash(junk) not in set().union(*[await look.keys_on(address) for address in addresses])
        for address in addresses:
            info = await look.info(address)
            assert all(ref.id != victim.me.id - 1 for ref in [*info.successors, *([info.predecessor] if info.predecessor else [])])
        await look.consistent(addresses[0], 4)
        assert await look.read(addresses[0], stored.cid) == stored.data
        assert_no_tracebacks(nodes)


def reset_connections(address: str, count: int) -> int:
    """Connect and at once reset (SO_LINGER 0) `count` times, with no certificate
    and no byte sent; how many connections the node accepted before refusing."""
    host, port = address.rsplit(":", 1)
    for index in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.settimeout(WAIT)
            sock.connect((host, int(port)))
        except OSError:
            return index
        finally:
            sock.close()
    return count


async def test_outsider_resetting_connections_takes_no_node_down(tmp_path: Path) -> None:
    """An outsider connects and resets before any TLS: every node keeps running
    and serving, and the file stored in the nodes' memory is still there."""
    async with node_ring(tmp_path, 3) as nodes, observer() as look:
        addresses = [node.address for node in nodes]
        await look.consistent(addresses[0], 3)
        stored = await look.put(addresses[0], content(100 * KIB, 11))
        for node in nodes:
            accepted = await trio.to_thread.run_sync(reset_connections, node.address, 100)
            assert accepted == 100, f"{node.address} stopped accepting connections after {accepted} resets"
        for node in nodes:
            with trio.move_on_after(1):  # a crash shows within a moment; a healthy node never exits
                await node.process.wait()
            assert node.alive(), f"{node.address} exited with {node.process.returncode}: {node.log_text()[-500:]}"
            assert (await look.info(node.address)).store["blocks"] > 0
        assert await look.read(addresses[1], stored.cid) == stored.data


async def test_an_insider_liar_costs_at_most_its_own_copies(tmp_path: Path) -> None:
    """Attack 1(b) and 2: a real node certificate, every lie at once, ~10 s of
    1-second repair rounds. Every block keeps r−1 honest copies at every sample; a
    `chordcdn put` during the attack fails with a clear message or really stores
    the file; after the liar is gone every file reads back through `chordcdn get`."""
    async with node_ring(tmp_path, 4) as nodes, observer() as look, trio.open_nursery() as nursery:
        honest = [node.address for node in nodes]
        await look.consistent(honest[0], 4)
        files = [await look.put(honest[1], content(600 * KIB, 3)), await look.put(honest[2], content(250 * KIB, 4))]
        keys = files[0].keys | files[1].keys
        await look.settled(honest, keys)
        liar, attack = await start_liar(nursery, look, honest, EVERY_LIE)
        during = tmp_path / "during.bin"
        during.write_bytes(content(200 * KIB, 5))
        put_during = await in_background(
            nursery, lambda: chordcdn("put", str(during), "--via", honest[3], "--chunk-size", str(CHUNK), "--json")
        )
        lows = await watch_copies(look, honest, keys, ATTACK_SECONDS, R - 1)
        put = await put_during()
        lied = {"steps": liar.steps, "challenges": liar.challenges, "refused": liar.refused}
        assert all(lied.values()), f"the liar never got to tell some lies: {lied}"
        await stop_liar(look, attack, nodes)
        assert min(lows) >= R - 1, f"a block fell below r−1 honest copies during the attack: minima {lows}"
        assert liar.accepted == [], liar.accepted
        assert min((await look.copies(honest, keys)).values()) >= R - 1
        async with trio.open_nursery() as checks:
            checks.start_soon(check_passes_within, honest[0])
            checks.start_soon(get_and_compare, files[0].cid, honest[3], files[0].data)
        assert await look.read(honest[2], files[1].cid) == files[1].data
        if put.returncode == 0:  # then it must really be stored: on honest nodes, readable
            cid, during_keys = put_command_keys(during.read_bytes())
            assert json.loads(put.stdout)["cid"] == cid
            assert min((await look.copies(honest, during_keys)).values()) >= 1
            assert await look.read(honest[0], cid) == during.read_bytes()
        else:  # refused: the forged replica set could not be confirmed, or routing through the liar failed
            assert put.returncode in (1, 3), put.stderr
            assert re.search(rb"copies acknowledged|no live route", put.stderr), put.stderr
        assert_no_tracebacks(nodes)


async def test_an_insider_posing_as_a_whole_replica_set_cannot_drop_copies(tmp_path: Path) -> None:
    """The original attack 1 by an insider: it names itself r times in every step
    answer, relays proofs, and displaces its successor's predecessor. No block may
    be lost, nor fall below r−1 honest copies."""
    async with node_ring(tmp_path, 4) as nodes, observer() as look, trio.open_nursery() as nursery:
        honest = [node.address for node in nodes]
        await look.consistent(honest[0], 4)
        stored = await look.put(honest[1], content(600 * KIB, 6))
        await look.settled(honest, stored.keys)
        _, attack = await start_liar(nursery, look, honest, POSING)
        lows = await watch_copies(look, honest, stored.keys, ATTACK_SECONDS, 1)
        await stop_liar(look, attack, nodes)
        counts = await look.copies(honest, stored.keys)
        lost = sum(count == 0 for count in counts.values())
        assert lost == 0, f"{lost} of {len(counts)} blocks have no copy left on any node (minima during the attack: {lows})"
        assert min(lows) >= R - 1, f"a block fell below r−1 honest copies during the attack: minima {lows}"
        assert await get_command(stored.cid, honest[2]) == stored.data


async def test_a_put_through_an_insider_posing_as_the_only_replica_fails_or_stores(tmp_path: Path) -> None:
    """Attack 2 by an insider: every step answer names the liar alone. `chordcdn
    put` must fail, or the file must be on honest nodes and read back after the
    liar has gone."""
    async with node_ring(tmp_path, 4) as nodes, observer() as look, trio.open_nursery() as nursery:
        honest = [node.address for node in nodes]
        await look.consistent(honest[0], 4)
        liar, attack = await start_liar(nursery, look, honest, Lies(posing=1, poison=False, displace=False))
        await look.consistent(honest[0], 5)
        via = next(address for address in honest if address != liar.routing.successor.address)  # not the victim
        source = tmp_path / "file.bin"
        source.write_bytes(content(400 * KIB, 7))
        put = await chordcdn("put", str(source), "--via", via, "--chunk-size", str(CHUNK), "--json")
        await stop_liar(look, attack, nodes)
        if put.returncode != 0:
            assert put.returncode in (1, 3) and re.search(rb"copies acknowledged|no live route", put.stderr), put.stderr
            return
        cid, keys = put_command_keys(source.read_bytes())
        assert json.loads(put.stdout)["cid"] == cid
        counts = await look.copies(honest, keys)
        missing = sum(count == 0 for count in counts.values())
        assert missing == 0, f"`chordcdn put` exited 0, yet {missing} of {len(keys)} blocks are on no honest node"
        assert await get_command(cid, honest[2]) == source.read_bytes()


async def test_a_client_counts_a_node_named_r_times_once() -> None:
    """Unit-level form of the put bug (no network): a lookup answer that names one
    node r times must not pass for r acknowledgements."""
    liar = NodeRef(12345, "127.0.0.1:1")

    async def call(node: NodeRef, method: str, *args: Any) -> bool:
        return True  # acknowledged (and, being a liar, not stored)

    async def locate(position: int) -> LookupResult:
        return LookupResult(position, liar, [liar] * R)

    client = DhtClient(call, locate, IdSpace(), replicas=R)
    with pytest.raises(PutFailed):
        await client.put_block(b"one block, one holder")


# -- 3. junk and capacity ---------------------------------------------------------------------

CAPACITY = 2 * MIB


async def assert_within_capacity(look: Observer, addresses: list[str]) -> None:
    for address in addresses:
        with trio.fail_after(2):  # a node busy looping on repair would answer late
            store = (await look.info(address)).store
        assert store["capacity"] == CAPACITY and store["used"] <= CAPACITY, (address, store)


async def test_full_nodes_refuse_junk_lose_nothing_and_keep_repairing(tmp_path: Path) -> None:
    """Attack 3(b): nodes with --capacity are filled through a client certificate
    until a put fails. `chordcdn put` then exits 1 saying "node full"; no store
    goes past its capacity; a file put before reads back; after a node is killed,
    repair onto full nodes neither crashes nor stalls the ring."""
    async with node_ring(tmp_path, 4, "--capacity", "2MiB") as nodes, observer() as look:
        addresses = [node.address for node in nodes]
        await look.consistent(addresses[0], 4)
        first = await look.put(addresses[1], content(300 * KIB, 8))
        await look.settled(addresses, first.keys)
        for seed in itertools.count(100):  # 4 nodes × 2 MiB hold under 3 MiB of files in 3 copies
            assert seed < 110, "ten 512 KiB files more went in: the capacity is not enforced"
            try:
                await look.put(addresses[seed % 4], content(512 * KIB, seed))
            except PutFailed as exc:
                assert "node full" in str(exc), exc
                break
            finally:
                await assert_within_capacity(look, addresses)
        junk = tmp_path / "junk.bin"
        junk.write_bytes(content(MIB, 99))
        refused = await chordcdn("put", str(junk), "--via", addresses[2], "--chunk-size", str(CHUNK))
        assert refused.returncode == 1 and b"node full" in refused.stderr, refused.stderr
        await assert_within_capacity(look, addresses)
        assert await look.read(addresses[3], first.cid) == first.data
        victim = nodes[3]
        victim.process.send_signal(signal.SIGKILL)  # its copies must now be made again on full nodes
        with trio.fail_after(WAIT):
            await victim.process.wait()
        survivors = [node.address for node in nodes[:3]]
        await look.consistent(survivors[0], 3)
        with trio.move_on_after(3):  # three repair rounds against full nodes
            while True:
                await assert_within_capacity(look, survivors)
                assert all(node.alive() for node in nodes[:3])
                await trio.sleep(0.3)
        async with trio.open_nursery() as checks:
            checks.start_soon(check_passes_within, survivors[0])
            checks.start_soon(get_and_compare, first.cid, survivors[1], first.data)
        assert_no_tracebacks(nodes[:3])


# -- 4. crash safety ------------------------------------------------------------------------------


@dataclass
class PutAttempt:
    data: bytes
    returncode: int
    output: bytes


async def put_stream(tmp_path: Path, via: str, attempts: list[PutAttempt], stop: trio.Event) -> None:
    """`chordcdn put` of one small file after another until `stop` is set."""
    for index in itertools.count():
        if stop.is_set():
            return
        source = tmp_path / f"small-{index}.bin"
        data = content(random.Random(index).randrange(20 * KIB, 120 * KIB), 1000 + index)
        source.write_bytes(data)
        result = await chordcdn("put", str(source), "--via", via, "--chunk-size", str(CHUNK), "--json")
        attempts.append(PutAttempt(data, result.returncode, result.stdout))


async def test_acknowledged_files_survive_sigkill_and_restart(tmp_path: Path) -> None:
    """Attack 4: SIGKILL nodes (with --data) in the middle of a stream of `chordcdn
    put`s and restart each with the same certificate and data directory, three
    times (the last time two nodes at once, r−1 of them). Every file whose put
    exited 0 reads back byte-exact."""
    data = tmp_path / "data"
    async with node_ring(tmp_path, 4, data=data) as nodes, observer() as look, trio.open_nursery() as nursery:
        via = nodes[0].address  # never killed: every put enters the ring through it
        await look.consistent(via, 4)
        attempts: list[PutAttempt] = []
        stop = trio.Event()
        nursery.start_soon(put_stream, tmp_path, via, attempts, stop)
        rng = random.Random(4)
        for cycle, victims in enumerate([[1], [2], [3, 1]]):
            await trio.sleep(rng.uniform(0.3, 1.5))  # somewhere inside some put
            for index in victims:
                nodes[index].process.send_signal(signal.SIGKILL)
            with trio.fail_after(WAIT):
                for index in victims:
                    await nodes[index].process.wait()
            logs = tmp_path / f"logs-{cycle}"
            logs.mkdir()

            async def restart(index: int) -> None:
                flags = [*STORE_FLAGS, "--data", str(data / f"node{index}")]
                nodes.append(await start_logged_node(logs, via, *flags, name=nodes[index].name))  # killed at the end too
                nodes[index] = nodes[-1]

            async with trio.open_nursery() as restarts:
                for index in victims:
                    restarts.start_soon(restart, index)
        with trio.move_on_after(60):  # on a loaded machine few puts fit between the kills: let a few more finish
            while sum(attempt.returncode == 0 for attempt in attempts) < 3:
                await trio.sleep(0.1)
        stop.set()
        with trio.fail_after(40):  # the put under way finishes
            while nursery.child_tasks:
                await trio.sleep(0.1)
        await look.consistent(via, 4, timeout=30)
        acknowledged = [attempt for attempt in attempts if attempt.returncode == 0]
        assert len(acknowledged) >= 3, [(attempt.returncode, attempt.output) for attempt in attempts]
        await check_passes_within(via)
        for attempt in acknowledged:  # read as `chordcdn get` reads: every block verified
            cid = json.loads(attempt.output)["cid"]
            assert cid == put_command_keys(attempt.data)[0]
            assert await look.read(nodes[2].address, cid) == attempt.data, f"acknowledged file {cid} came back different"
        assert_no_tracebacks(nodes[:4])


# -- 5. a lying storage node on a simulated ring --------------------------------------------------


class ClaimingStore(MemoryBlockStore):
    """A liar's store: keeps no bytes, claims (in keys_in, digests, len) every
    block it was given, and answers reads, and so possession challenges, with
    bytes that are not the block: its proofs are wrong digests."""

    async def put(self, key: bytes, data: bytes) -> bool:
        if key in self:
            return False
        self._index.add(key)
        return True

    async def get(self, key: bytes) -> bytes | None:
        return b"not the block " + key if key in self else None


async def test_simulated_liar_never_costs_a_last_copy(make_cluster: ClusterFactory, autojump_clock: MockClock) -> None:
    """Attack 1 on a simulated ring in virtual time: one storage node claims every
    block it is offered and answers every possession challenge wrongly, across
    ~50 repair rounds with joins and graceful leaves. No block ever loses its last
    copy, the honest nodes count the wrong proofs, and r−1 honest copies remain."""
    cluster: SimCluster = make_cluster(storage=StorageConfig(replicas=R, repair_interval=2.0), seed=5)
    await cluster.grow(10)
    await cluster.wait_until(lambda: cluster.is_converged() and cluster.successor_lists_full(), 60)
    liar_address = sorted(cluster.nodes)[4]
    liar = cluster.services[liar_address]
    liar.store = ClaimingStore(liar.space)
    writer = DhtClient.for_node(cluster.nodes[sorted(cluster.nodes)[0]], replicas=R)
    keys: set[bytes] = set()
    for seed in range(3):
        data = content(200 * KIB, seed)
        assert await writer.put_file(io.BytesIO(data), CHUNK, FANOUT) == dag_keys(data)[0]
        keys |= dag_keys(data)[1]
    services = dict(cluster.services)  # every service that ever ran, for its counters

    def honest_copies() -> dict[bytes, int]:
        counts = dict.fromkeys(keys, 0)
        for address, service in cluster.services.items():
            if address != liar_address:
                for key in keys & service.store.blocks.keys():
                    counts[key] += 1
        return counts

    lows: list[int] = []

    async def sample() -> None:
        while True:
            lows.append(min(honest_copies().values()))
            await trio.sleep(0.25)

    rng = random.Random(9)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        for event in range(16):
            await trio.sleep(rng.uniform(3, 8))
            if event % 2 == 0:
                node = await cluster.add_node()
                services[node.me.address] = cluster.services[node.me.address]
            else:
                await cluster.leave(rng.choice(sorted(set(cluster.nodes) - {liar_address})))
        await cluster.wait_until(lambda: min(honest_copies().values()) >= R - 1, 120)
        nursery.cancel_scope.cancel()
    assert min(lows) >= 1, f"a block lost its last honest copy: minima {lows}"
    assert len(liar.store) > 0 and not liar.store.blocks, "the liar claimed nothing"
    failed = sum(service.stats.proofs_failed for address, service in services.items() if address != liar_address)
    assert failed > 0, "no honest node counted the liar's wrong proofs"
