"""Walking a live ring from any node, and judging whether it is consistent.

`walk` gathers every node reachable from one address by following successor
lists, predecessors and fingers; `ring_problems` is pure and compares each
node's successor and predecessor pointers with the ring sorted by ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dht.errors import ChordError
from dht.ids import IdSpace
from dht.messages import NodeInfo
from dht.routing import NodeRef
from dht.transport import Transport


def node_json(info: NodeInfo, space: IdSpace) -> dict[str, Any]:
    """One node of `chordcdn ring --json`."""

    def ref(node: NodeRef | None) -> dict[str, str] | None:
        return None if node is None else {"address": node.address, "id": format(node.id, "x")}

    return {
        **ref(info.me),  # type: ignore[dict-item]
        "short_id": space.short(info.me.id),
        "predecessor": ref(info.predecessor),
        "successor": ref(info.successor),
        "successors": [ref(n) for n in info.successors],
        "finger_count": len(info.fingers),
        "store": info.store,
    }


@dataclass
class RingView:
    """Every node found from one starting point, and the addresses that did not answer."""

    nodes: list[NodeInfo] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)


async def walk(transport: Transport, via: str, timeout: float = 2.0, limit: int = 100_000) -> RingView:
    """Ask `via`, then every node it names, for its info. Raises ChordError when
    `via` itself does not answer."""
    view = RingView()
    first = NodeInfo.from_wire(await transport.call(via, "info", [], timeout=timeout))
    seen = {via, first.me.address}
    queue = [first]
    while queue and len(view.nodes) < limit:
        info = queue.pop()
        view.nodes.append(info)
        for ref in (*info.successors, *([info.predecessor] if info.predecessor else []), *info.fingers):
            if ref.address in seen:
                continue
            seen.add(ref.address)
            try:
                queue.append(NodeInfo.from_wire(await transport.call(ref.address, "info", [], timeout=timeout)))
            except ChordError:
                view.unreachable.add(ref.address)
    view.nodes.sort(key=lambda info: info.me.id)
    return view


def ring_problems(view: RingView) -> list[str]:
    """Each successor or predecessor pointer that disagrees with the ring of
    answering nodes sorted by ID. Pure."""
    nodes = view.nodes
    problems: list[str] = []

    def name(node: NodeRef | None) -> str:
        if node is None:
            return "none"
        return node.address + (" (not answering)" if node.address in view.unreachable else "")

    for index, info in enumerate(nodes):
        alone = len(nodes) == 1
        expected_successor = info.me if alone else nodes[(index + 1) % len(nodes)].me
        expected_predecessor = None if alone else nodes[index - 1].me
        if info.successor != expected_successor:
            problems.append(f"{info.me.address}: successor is {name(info.successor)}, should be {name(expected_successor)}")
        if info.predecessor != expected_predecessor:
            problems.append(
                f"{info.me.address}: predecessor is {name(info.predecessor)}, should be {name(expected_predecessor)}"
            )
    return problems


def render_ring(view: RingView, space: IdSpace) -> list[str]:
    """The ring as an aligned table, one node a line, in ID order. Pure."""
    rows = [("ADDRESS", "ID", "PREDECESSOR", "SUCCESSOR", "FINGERS", "STORED")]
    for info in view.nodes:
        rows.append(
            (
                info.me.address,
                space.short(info.me.id),
                info.predecessor.address if info.predecessor else "-",
                info.successor.address,
                str(len(info.fingers)),
                fill_level(info.store),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def fill_level(store: dict[str, int]) -> str:
    """"1.5MiB/4.0GiB" (used of capacity), "1.5MiB" without a capacity, "-" for no store."""
    if "used" not in store:
        return "-"
    used = human_bytes(store["used"])
    return f"{used}/{human_bytes(store['capacity'])}" if store.get("capacity") else used


def human_bytes(count: int) -> str:
    """"512B", "1.5KiB" … "2.0TiB"."""
    if count < 1024:
        return f"{count}B"
    size = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}TiB"
