"""Lookup latency under the geo latency model, against the median round trip.

Runs the `chordcdn sim --scenario static` code path three ways on the same ring
(same seed, same node places): iterative lookups with each finger the first node
of its interval (the peer: how lookups ran before proximity), iterative with
proximity fingers, and recursive with proximity fingers. Each ring runs its
maintenance for --warmup virtual seconds first, so fingers have measured their
candidates. The bar (issue 13): at 1,000 nodes, median lookup latency ≤ 2 × the
median round trip between two nodes, and p99 ≤ 1 s.

    python -m tools.bench.bench_latency [--nodes 1000] [--lookups 2000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tools.sim import SimOptions, run

WAYS = (
    ("iterative, first-node fingers", "iterative", False),
    ("iterative, proximity fingers", "iterative", True),
    ("recursive, proximity fingers", "recursive", True),
)


def measure(nodes: int, lookups: int, seed: int, warmup: float) -> list[dict[str, Any]]:
    rows = []
    for label, mode, proximity in WAYS:
        summary = run(SimOptions(
            nodes=nodes, lookups=lookups, seed=seed, latency_model="geo", lookup_mode=mode, proximity_fingers=proximity,
            stabilize_interval=1.0, warmup=warmup,
        ))
        rows.append({
            "way": label, "nodes": nodes, "lookups": summary["lookups"], "wrong": summary["wrong"], "failed": summary["failed"],
            "mean_hops": summary["mean_hops"], "p50_latency": summary["p50_latency"], "p99_latency": summary["p99_latency"],
            "median_rtt": summary["median_rtt"], "p50_over_rtt": summary["p50_latency"] / summary["median_rtt"],
            "lookup_bytes_per_node_per_s": summary["lookup_bytes_per_node_per_s"], "wall_seconds": summary["wall_seconds"],
        })
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    header = f"{'way':<30} {'hops':>5} {'p50 s':>6} {'p99 s':>6} {'RTT s':>6} {'p50/RTT':>7} {'wrong':>5} {'failed':>6}  bar (p50 ≤ 2 RTT, p99 ≤ 1 s)"
    lines = [header, "-" * len(header)]
    for row in rows:
        met = row["p50_over_rtt"] <= 2.0 and row["p99_latency"] <= 1.0
        lines.append(
            f"{row['way']:<30} {row['mean_hops']:>5.2f} {row['p50_latency']:>6.3f} {row['p99_latency']:>6.3f} "
            f"{row['median_rtt']:>6.3f} {row['p50_over_rtt']:>7.2f} {row['wrong']:>5} {row['failed']:>6}  {'met' if met else 'missed'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=30.0, help="virtual seconds of maintenance before the lookups")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.nodes, args.lookups, args.seed, args.warmup)
    print(json.dumps(rows, indent=2) if args.json else render(rows))


if __name__ == "__main__":
    main()
