"""DhtClient reuses a lookup of its own for puts only briefly: blocks put within
WRITE_LOOKUP_AGE of a lookup whose answer covers them go to its replica set with
no new lookup; an older answer, or one whose nodes failed a put, is looked up
afresh. Fake nodes and a fake lookup, on trio's MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dht.client import WRITE_LOOKUP_AGE, DhtClient, PutFailed
from dht.errors import PeerUnreachable
from dht.ids import IdSpace
from dht.merkle import block_hash
from dht.messages import LookupResult
from dht.routing import NodeRef

SPACE = IdSpace()
NODES = [NodeRef(SPACE.size // 4 * (index + 1) - 1, f"n{index}:1") for index in range(4)]


class FakeRing:
    """Every block's replica set is the whole ring; counts lookups and stored copies."""

    def __init__(self) -> None:
        self.lookups = 0
        self.stored: list[tuple[str, bytes]] = []
        self.unreachable: set[str] = set()

    async def call(self, node: NodeRef, method: str, *args: Any) -> Any:
        assert method == "put_block"
        if node.address in self.unreachable:
            raise PeerUnreachable(f"{node.address} is down")
        self.stored.append((node.address, args[0]))
        return True

    async def locate(self, position: int) -> LookupResult:
        self.lookups += 1
        owner = next((node for node in NODES if node.id >= position), NODES[0])
        index = NODES.index(owner)
        successors = NODES[index:] + NODES[:index]  # in ring order from the owner
        before = NODES[index - 1]
        return LookupResult(position, owner, successors, arc_start=before.id)

    def client(self) -> DhtClient:
        return DhtClient(self.call, self.locate, SPACE, replicas=3)


def block_in_arc(owner_index: int, salt: int) -> bytes:
    """A block whose key lands in the arc of NODES[owner_index]."""
    low = NODES[owner_index - 1].id if owner_index else NODES[-1].id
    for number in range(100_000):
        data = f"{salt}-{number}".encode()
        position = SPACE.position(block_hash(data))
        if 0 < (position - low) % SPACE.size <= (NODES[owner_index].id - low) % SPACE.size:
            return data
    raise AssertionError("no block found in the arc")


async def test_puts_within_the_write_age_share_one_lookup(autojump_clock: MockClock) -> None:
    ring = FakeRing()
    client = ring.client()
    for salt in range(5):
        await client.put_block(block_in_arc(2, salt))
    assert ring.lookups == 1
    assert len(ring.stored) == 5 * 3
    await client.put_block(block_in_arc(0, 0))  # another arc: its own lookup
    assert ring.lookups == 2


async def test_an_answer_older_than_the_write_age_is_looked_up_again(autojump_clock: MockClock) -> None:
    ring = FakeRing()
    client = ring.client()
    await client.put_block(block_in_arc(1, 0))
    await trio.sleep(WRITE_LOOKUP_AGE + 0.1)
    await client.put_block(block_in_arc(1, 1))
    assert ring.lookups == 2


async def test_a_failed_copy_makes_the_retry_look_up_afresh(autojump_clock: MockClock) -> None:
    ring = FakeRing()
    client = ring.client()
    await client.put_block(block_in_arc(3, 0))
    ring.unreachable.add(NODES[3].address)  # the owner goes down
    ring.lookups = 0
    with pytest.raises(PutFailed):  # the fake lookup still names the dead owner
        await client.put_block(block_in_arc(3, 1))
    assert ring.lookups == 1  # the first round used the cached answer; the second looked up afresh
