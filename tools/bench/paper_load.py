"""The Chord paper's load-balance experiment with virtual nodes (Stoica et al.,
SIGCOMM 2001, §6.1, Figure 9), on our ID derivation.

10^4 real nodes, 10^6 keys, r = 1, 2, 5, 10, 20 virtual nodes per real node (and
32 and 64 beside them): keys per real node, mean and 1st and 99th percentiles,
against the paper's figures (the 99th percentile falls from 4.8x to 1.6x the mean
as r goes from 1 to 20, the 1st rises from 0 to 0.5x). Node i's first ID is the
hash of its simulated address, as in `chordcdn sim`; its other positions' IDs
follow from it (`IdSpace.vnode_id`); keys are SHA-256 digests of random bytes.
Counting is `dht.loadbalance`, the code behind `load_p99_over_mean` in
`chordcdn sim --scenario static --blocks K`.

    python -m tools.bench.paper_load [--nodes 10000] [--keys 1000000] [--out docs/paper]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from dht.ids import IdSpace
from dht.loadbalance import keys_per_machine, load_figures
from tools.argtypes import integer

VNODES = (1, 2, 5, 10, 20, 32, 64)
PAPER = {1: (0.0, 4.8), 20: (0.5, 1.6)}  # r: (1st, 99th percentile over the mean), from the paper's text


def positions(space: IdSpace, nodes: int, vnodes: int) -> list[tuple[int, str]]:
    ring = []
    for number in range(1, nodes + 1):
        address = f"sim-{number}"
        first = space.node_id(address)
        ring += [(space.vnode_id(first, index), address) for index in range(vnodes)]
    return sorted(ring)


def measure(nodes: int, keys: int, vnodes: int, seed: int) -> dict[str, Any]:
    space = IdSpace()
    rng = random.Random(seed)
    started = time.perf_counter()
    counts = keys_per_machine(positions(space, nodes, vnodes), (space.position(rng.randbytes(32)) for _ in range(keys)))
    return {"vnodes": vnodes, "nodes": nodes, "keys": keys, **load_figures(counts.values()), "seconds": time.perf_counter() - started}


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| virtual nodes r | mean keys | 1st percentile | 99th percentile | 1st ÷ mean | 99th ÷ mean | paper: 1st, 99th ÷ mean |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        paper = PAPER.get(row["vnodes"])
        quoted = f"{paper[0]:g}×, {paper[1]:g}×" if paper else ""
        lines.append(
            f"| {row['vnodes']} | {row['load_mean']:.0f} | {row['load_p1']} | {row['load_p99']} | "
            f"{row['load_p1_over_mean']:.2f}× | {row['load_p99_over_mean']:.2f}× | {quoted} |"
        )
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    vnodes = [row["vnodes"] for row in rows]
    axes.plot(vnodes, [row["load_p99_over_mean"] for row in rows], "o-", label="99th percentile (ours)")
    axes.plot(vnodes, [row["load_p1_over_mean"] for row in rows], "s-", label="1st percentile (ours)")
    axes.plot(list(PAPER), [p99 for _, p99 in PAPER.values()], "x", markersize=10, color="black", label="paper, 99th / 1st")
    axes.plot(list(PAPER), [p1 for p1, _ in PAPER.values()], "x", markersize=10, color="black")
    axes.axhline(1.0, color="grey", linewidth=0.5)
    axes.set_xscale("log")
    axes.set_xticks(vnodes, [str(v) for v in vnodes])
    axes.set_xlabel("virtual nodes per real node")
    axes.set_ylabel("keys per real node ÷ mean")
    axes.set_title(f"{rows[0]['nodes']:,} nodes, {rows[0]['keys']:,} keys")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(prog="paper_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=integer(2, 100_000), default=10_000)
    parser.add_argument("--keys", type=integer(1, 10_000_000), default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write load.json, results-load.md and load.png here")
    args = parser.parse_args()
    rows = []
    for vnodes in VNODES:
        rows.append(measure(args.nodes, args.keys, vnodes, args.seed))
        print(f"r = {vnodes:2}: 1st {rows[-1]['load_p1_over_mean']:.2f}x, 99th {rows[-1]['load_p99_over_mean']:.2f}x the mean", flush=True)
    lines = table(rows)
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "results-load.md").write_text("\n".join(lines) + "\n")
        plot(rows, args.out / "load.png")


if __name__ == "__main__":
    main()
