"""Running real nodes over TCP: one node in the foreground (`chordcdn node`) and
storing nodes in this process for the demo and the tests.

Owns process life: the open-file limit, binding, joining, credentials kept
fresh, SIGTERM and Ctrl-C as a graceful leave. Once a node runs, what it built at
start is frozen out of the garbage collector's way (`gc.freeze`): a full
collection over a large process's start-up objects otherwise stalls every call
for a few hundred milliseconds. Reports go through the `report`
callback so the library itself never prints.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
from dataclasses import dataclass
from typing import Callable

import trio

from dht.addresses import split_address
from dht.blockstore import BlockStore, MemoryBlockStore
from dht.ids import IdSpace
from dht.segmentstore import DEFAULT_OPEN_FILES, DiskBlockStore, StoreError
from dht.node import ChordNode, NodeConfig
from dht.storage import BlockService, StorageConfig
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials
from dht.transport import Transport
from dht.vnodes import join_all, positions_on

from .ringwalk import RingView, ring_problems, walk
from .security import keep_fresh

log = logging.getLogger(__name__)

Report = Callable[[str], None]
LEAVE_BUDGET = 60.0  # seconds a graceful leave may spend handing off blocks
COMPACT_INTERVAL = 300.0  # seconds between compaction passes


async def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; return the signal number."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            return signum
    raise AssertionError("signal receiver ended")


def prepare_server_process() -> None:
    """What every long-running chordcdn process does first: raise the soft limit on
    open files to the hard limit (Debian's soft default of 1,024 is a few hundred
    peers), and ignore SIGHUP until the credential watcher takes it over (SIGHUP
    means "reload", never "die")."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


@dataclass(frozen=True)
class NodeSetup:
    """Everything `chordcdn node` is told: where to listen and what to advertise,
    whom to join, the protocol and storage settings, credentials."""

    listen: str
    join: str | None = None
    advertise: str | None = None
    node_id: int | None = None
    config: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    data_dir: str | None = None
    capacity: int | None = None
    tls: TlsCredentials | None = None
    fsync: str = "always"
    open_files: int = DEFAULT_OPEN_FILES
    compact_interval: float = COMPACT_INTERVAL
    vnodes: int = 1  # ring positions this process holds (`dht.vnodes`)


def open_store(setup: NodeSetup) -> BlockStore:
    """The node's block store: segment files under data_dir (StoreError naming the
    file when they cannot be used), else memory."""
    space = IdSpace(setup.config.bits)
    if setup.data_dir:
        return DiskBlockStore(space, setup.data_dir, setup.capacity, fsync=setup.fsync, open_files=setup.open_files)
    return MemoryBlockStore(space, setup.capacity)


async def compact_now_and_then(store: BlockStore, interval: float) -> None:
    """Give back the space of dropped blocks every `interval` seconds (`DiskBlockStore.compact`)."""
    if not isinstance(store, DiskBlockStore):
        return
    while True:
        await trio.sleep(interval)
        try:
            await store.compact()
        except StoreError as exc:
            log.warning("compaction failed: %s", exc)


async def run_node(setup: NodeSetup, report: Report) -> None:
    """Serve one storing node until SIGTERM or Ctrl-C, then hand off its blocks and
    leave the ring gracefully. Blocks live under data_dir (in memory without one)."""
    host, port = split_address(setup.listen)
    store = open_store(setup)  # first, so that a problem with its files is not taken for one with the socket
    async with open_tcp_transport(host, port, advertise=setup.advertise, tls=setup.tls) as transport:
        positions = positions_on(transport, setup.config, setup.vnodes, setup.node_id)
        node = positions[0]
        service = BlockService(positions, store, setup.storage)
        await join_all(positions, setup.join)
        async with trio.open_nursery() as nursery:
            for position in positions:
                await nursery.start(position.run)
            await nursery.start(service.run)
            nursery.start_soon(keep_fresh, setup.tls)
            nursery.start_soon(compact_now_and_then, store, setup.compact_interval)
            gc.freeze()
            held = f", {len(store)} blocks in {setup.data_dir}" if setup.data_dir else ""
            secured = "" if setup.tls else " (plaintext: --insecure)"
            virtual = f", {len(positions)} ring positions" if len(positions) > 1 else ""
            report(f"node {node.space.short(node.me.id)} listening on {node.me.address}{virtual}{held}{secured}")
            signum = await wait_for_signal()
            log.info("%s received: handing off blocks and leaving the ring", signal.Signals(signum).name)
            with trio.move_on_after(LEAVE_BUDGET):
                await service.leave()
            nursery.cancel_scope.cancel()
        if isinstance(store, DiskBlockStore):
            store.close()
    report(f"node {node.space.short(node.me.id)} left the ring")


async def settled_view(client: Transport, via: str, deadline: float) -> RingView:
    """Walk the ring until it checks clean or `deadline` (trio time) passes."""
    view = await walk(client, via)
    while ring_problems(view) and trio.current_time() < deadline:
        await trio.sleep(0.2)
        view = await walk(client, via)
    return view


async def serve_local_node(
    join: str | None,
    config: NodeConfig,
    storage: StorageConfig = StorageConfig(),
    tls: TlsCredentials | None = None,
    *,
    task_status: trio.TaskStatus[ChordNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One node on 127.0.0.1 with a free port, joined, running and storing blocks in
    memory, until cancelled."""
    async with open_tcp_transport("127.0.0.1", 0, tls=tls) as transport:
        node = ChordNode(transport, config)
        service = BlockService(node, MemoryBlockStore(node.space), storage)
        await node.join(join)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(service.run)
            gc.freeze()
            task_status.started(node)
        await trio.sleep_forever()  # after a leave, until cancelled: the transport stays open
