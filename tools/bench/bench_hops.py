"""Lookup path lengths on a stabilized ring, N = 2^4 … 2^12, beside ½·log2 N.

Runs the real node code on the simulated network (the `chordcdn sim --scenario
static` code path) for each N, with ideal (fully stabilized) routing state, and
optionally also with rings built by real joins and stabilization. The Chord paper
(Stoica et al. 2001, fig. 10a) reports a mean path length of about ½·log2 N; the
bars here are mean ≤ 5.0 at N = 1024 and ≤ 6.0 at N = 4096, and the 4096-node
build plus 10,000 lookups within 60 s of wall time.

    python -m tools.bench.bench_hops [--lookups 10000] [--join-up-to 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from tools.sim import SimOptions, run

BARS = {1024: 5.0, 4096: 6.0}


def measure(nodes: int, lookups: int, build: str, seed: int) -> dict[str, Any]:
    summary = run(SimOptions(nodes=nodes, lookups=lookups, build=build, seed=seed))
    return {
        "nodes": nodes,
        "build": build,
        "half_log2_n": 0.5 * math.log2(nodes),
        "mean_hops": summary["mean_hops"],
        "p50_hops": summary["p50_hops"],
        "p99_hops": summary["p99_hops"],
        "correct_rate": summary["correct_rate"],
        "build_virtual_seconds": summary["build_virtual_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "bar": BARS.get(nodes),
    }


def render(rows: list[dict[str, Any]]) -> str:
    header = f"{'N':>6} {'build':>6} {'½log2N':>7} {'mean':>6} {'p50':>4} {'p99':>4} {'correct':>8} {'wall s':>7}  bar"
    lines = [header, "-" * len(header)]
    for row in rows:
        bar = row["bar"]
        verdict = "" if bar is None else f"≤ {bar:.1f} {'met' if row['mean_hops'] <= bar else 'MISSED'}"
        lines.append(
            f"{row['nodes']:>6} {row['build']:>6} {row['half_log2_n']:>7.2f} {row['mean_hops']:>6.2f} "
            f"{row['p50_hops']:>4} {row['p99_hops']:>4} {row['correct_rate']:>8.4f} {row['wall_seconds']:>7.1f}  {verdict}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--max-exponent", type=int, default=12)
    parser.add_argument("--join-up-to", type=int, default=1024, help="also build rings by real joins up to this N (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for exponent in range(4, args.max_exponent + 1):
        nodes = 2**exponent
        rows.append(measure(nodes, args.lookups, "ideal", args.seed))
        if nodes <= args.join_up_to:
            rows.append(measure(nodes, args.lookups, "join", args.seed))
    print(json.dumps(rows, indent=2) if args.json else render(rows))


if __name__ == "__main__":
    main()
