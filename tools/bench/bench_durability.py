"""What durability costs: fsync on every put, background scrubbing, and compaction.

Three rings of --nodes `chordcdn node` processes on 127.0.0.1 (mutual TLS, r =
--replicas, data in segment files) differ in one flag each, and take turns in
every round, so a slow spell of the shared machine hits all of them:

- `fsync`: `--fsync always --scrub-rate 0` (a put is acknowledged once on disk);
- `no-fsync`: `--fsync never --scrub-rate 0`, the peer for put throughput;
- `fsync-scrub`: `--fsync always` with the default scrub rate, the peer for get
  throughput (the bar: scrubbing costs at most 10% of it).

Each round puts a fresh --size-mib file through each ring and gets it back (the
machinery of `tools.bench.bench_store`). Then, in this process, a DiskBlockStore of
--compact-mib of 256 KiB blocks in 64 MiB segments has every other block deleted
(50% dead space) and is compacted while a reader keeps reading live blocks: the
time compaction took, the bytes given back, and read throughput before and during.

    python -m tools.bench.bench_durability [--size-mib 256] [--nodes 8] [--rounds 3] [--compact-mib 256] [--json]

Bars (issue 14): put with fsync ≥ 80 MB/s, get with fsync about unchanged against
no-fsync, get with scrubbing ≥ 90% of get without.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import trio

from dht.ids import IdSpace
from dht.merkle import block_hash
from dht.scrub import DEFAULT_SCRUB_RATE
from dht.segmentstore import DiskBlockStore
from tools.bench.bench_rpc import progress
from tools.bench.bench_store import (
    MB, MIB, Options, Ring, Transfers, make_source, start_ring, stop_all, transfer_round, wait_for_ring,
)
from tools.cluster import LocalCluster

RINGS = {
    "fsync": ["--fsync", "always", "--scrub-rate", "0"],
    "no-fsync": ["--fsync", "never", "--scrub-rate", "0"],
    "fsync-scrub": ["--fsync", "always", "--scrub-rate", str(DEFAULT_SCRUB_RATE)],
}
BARS = {"put_with_fsync_mb_per_s": 80.0, "get_with_scrub_over_without": 0.90}
COMPACT_BLOCK = 256 * 1024


@dataclass
class FlaggedRing(Ring):
    """A TLS ring whose nodes all take `flags`."""

    flags: list[str] = field(default_factory=list)

    def security(self, name: str) -> list[str]:
        return [*super().security(name), *self.flags]


def ring_rounds(options: Options) -> dict[str, Transfers]:
    transfers = {name: Transfers() for name in RINGS}
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_durability-")))
        pki = LocalCluster(base / "pki")
        rings = [FlaggedRing(name, pki, flags=flags) for name, flags in RINGS.items()]
        try:
            for ring in rings:
                start_ring(base, options, ring, stack)
            for ring in rings:
                progress(f"ring {ring.mode} ready after {wait_for_ring(ring, options):.1f} s")
            sources = [make_source(base, options.size, n) for n in range(options.rounds)]
            for number in range(1, options.rounds + 1):
                for ring in rings:
                    trio.run(transfer_round, ring, number, sources, options, transfers[ring.mode])
        finally:
            for ring in rings:
                stop_all(ring.nodes)
    return transfers


async def compaction(size: int) -> dict[str, float]:
    """Compact a store half dead while reading from it; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="bench_compact-") as directory:
        store = DiskBlockStore(IdSpace(256), directory, fsync="never")
        store.SEGMENT_LIMIT = 64 * MIB
        keys = []
        for serial in range(size // COMPACT_BLOCK):
            data = serial.to_bytes(8, "big") + os.urandom(COMPACT_BLOCK - 8)
            keys.append(block_hash(data))
            await store.put(keys[-1], data)
        for key in keys[::2]:
            await store.delete(key)
        live = keys[1::2]
        before_bytes = store.disk_bytes()
        idle_rate = await read_rate(store, live, 2.0)
        started = time.perf_counter()
        rates: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_while, store, live, rates)
            reclaimed = await store.compact()
            nursery.cancel_scope.cancel()
        took = time.perf_counter() - started
        assert all(store.verified(key) is not None for key in live)
        store.close()
    return {
        "store_mib": size / MIB, "dead_share": 0.5, "compaction_seconds": took, "reclaimed_mib": reclaimed / MIB,
        "disk_mib_before": before_bytes / MIB, "read_mb_per_s_idle": idle_rate,
        "read_mb_per_s_during": median(rates) if rates else 0.0,
    }


async def read_rate(store: DiskBlockStore, keys: list[bytes], seconds: float) -> float:
    """MB/s of verified reads over `seconds`, yielding to other tasks between blocks."""
    started, read, index = time.perf_counter(), 0, 0
    while time.perf_counter() - started < seconds:
        data = store.verified(keys[index % len(keys)])
        read += len(data or b"")
        index += 1
        await trio.lowlevel.checkpoint()
    return read / (time.perf_counter() - started) / MB


async def read_while(store: DiskBlockStore, keys: list[bytes], rates: list[float]) -> None:
    while True:
        rates.append(await read_rate(store, keys, 0.05))


def summary(transfers: dict[str, Transfers]) -> dict[str, Any]:
    medians = {
        name: {kind: median(float(r.figures()[f"{kind}_mb_per_s"]) for r in t.rounds) for kind in ("put", "get")}
        for name, t in transfers.items()
    }
    return {
        "medians_mb_per_s": medians,
        "put_fsync_over_no_fsync": medians["fsync"]["put"] / medians["no-fsync"]["put"],
        "get_fsync_over_no_fsync": medians["fsync"]["get"] / medians["no-fsync"]["get"],
        "get_with_scrub_over_without": medians["fsync-scrub"]["get"] / medians["fsync"]["get"],
    }


def render(figures: dict[str, Any]) -> str:
    rings, compacted = figures["rings"], figures["compaction"]
    lines = [f"{'ring':<12} {'put MB/s':>9} {'get MB/s':>9}"]
    for name, rates in rings["medians_mb_per_s"].items():
        lines.append(f"{name:<12} {rates['put']:>9.1f} {rates['get']:>9.1f}")
    put = rings["medians_mb_per_s"]["fsync"]["put"]
    lines += [
        "",
        f"put with fsync: {put:.1f} MB/s (bar ≥ {BARS['put_with_fsync_mb_per_s']:g}: {'met' if put >= BARS['put_with_fsync_mb_per_s'] else 'MISSED'}), "
        f"{rings['put_fsync_over_no_fsync']:.2f} × no-fsync",
        f"get with fsync: {rings['get_fsync_over_no_fsync']:.2f} × no-fsync",
        f"get while scrubbing: {rings['get_with_scrub_over_without']:.2f} × without "
        f"(bar ≥ {BARS['get_with_scrub_over_without']:g}: {'met' if rings['get_with_scrub_over_without'] >= BARS['get_with_scrub_over_without'] else 'MISSED'})",
        "",
        f"compaction of {compacted['store_mib']:.0f} MiB, half dead: {compacted['compaction_seconds']:.2f} s, "
        f"{compacted['reclaimed_mib']:.0f} MiB given back; reads {compacted['read_mb_per_s_idle']:.0f} MB/s idle, "
        f"{compacted['read_mb_per_s_during']:.0f} MB/s during",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compact-mib", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = Options(size=args.size_mib * MIB, nodes=args.nodes, replicas=args.replicas, rounds=args.rounds, window=16,
                      stabilize_interval=0.5, link_seconds=2.0, transfer_timeout=600.0, fresh=True)
    figures = {"rings": summary(ring_rounds(options)), "compaction": trio.run(compaction, args.compact_mib * MIB)}
    print(json.dumps(figures, indent=2) if args.json else render(figures))


if __name__ == "__main__":
    main()
