"""Running real nodes over TCP: one node in the foreground (`chordcdn node`) and
storing nodes in this process for the demo and the tests.

Owns process life: binding, joining, SIGTERM and Ctrl-C as a graceful leave.
Reports go through the `report` callback so the library itself never prints.
"""

from __future__ import annotations

import logging
import signal
from typing import Callable

import trio

from dht.blockstore import DiskBlockStore, MemoryBlockStore
from dht.node import ChordNode, NodeConfig
from dht.storage import BlockService, StorageConfig
from dht.tcp import open_tcp_transport, split_address
from dht.transport import Transport

from .ringwalk import RingView, ring_problems, walk

log = logging.getLogger(__name__)

Report = Callable[[str], None]
LEAVE_BUDGET = 60.0  # seconds a graceful leave may spend handing off blocks


async def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; return the signal number."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            return signum
    raise AssertionError("signal receiver ended")


async def run_node(
    listen: str,
    join: str | None,
    node_id: int | None,
    config: NodeConfig,
    report: Report,
    storage: StorageConfig = StorageConfig(),
    data_dir: str | None = None,
) -> None:
    """Serve one storing node until SIGTERM or Ctrl-C, then hand off its blocks and
    leave the ring gracefully. Blocks live under data_dir (in memory without one)."""
    host, port = split_address(listen)
    async with open_tcp_transport(host, port) as transport:
        node = ChordNode(transport, config, node_id)
        store = DiskBlockStore(node.space, data_dir) if data_dir else MemoryBlockStore(node.space)
        service = BlockService(node, store, storage)
        await node.join(join)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(service.run)
            held = f", {len(store)} blocks in {data_dir}" if data_dir else ""
            report(f"node {node.space.short(node.me.id)} listening on {node.me.address}{held}")
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
    join: str | None, config: NodeConfig, storage: StorageConfig = StorageConfig(), *, task_status: trio.TaskStatus[ChordNode] = trio.TASK_STATUS_IGNORED
) -> None:
    """One node on 127.0.0.1 with a free port, joined, running and storing blocks in
    memory, until cancelled."""
    async with open_tcp_transport("127.0.0.1", 0) as transport:
        node = ChordNode(transport, config)
        service = BlockService(node, MemoryBlockStore(node.space), storage)
        await node.join(join)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(service.run)
            task_status.started(node)
        await trio.sleep_forever()  # after a leave, until cancelled: the transport stays open
