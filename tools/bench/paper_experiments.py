"""The Chord paper's experiments (Stoica et al., SIGCOMM 2001, §6), run on our code.

(a) path length for N = 2^3 … 2^12 on a stabilized ring, against ½·log2 N;
(b) simultaneous failure of a fraction p = 0.1 … 0.5 of 1,000 nodes: lookup
    failures before the ring heals (the paper: about p) and blocks lost with r = 3;
(c) 500 nodes under churn at R = 0.01 … 0.1 events/s, stabilization every 30 s on
    average, 1 lookup/s, 2 virtual hours (the paper: 1–3% failures without retries).
    Bars at R = 0.05: lookup failures ≤ 0.1% and 0 blocks lost with r = 3.

Every run is `tools.sim.run_detailed`, the code behind `chordcdn sim`. Results go to
--out (default docs/paper): one JSON per run, results.md with the tables, and plots.

    python -m tools.bench.paper_experiments [--only a,b,c] [--out docs/paper] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tools.sim import SimOptions, run_detailed

PAPER_C = "1–3% (no retries)"


def experiment_a() -> list[SimOptions]:
    return [SimOptions(scenario="static", nodes=2**k, lookups=10_000, seed=1) for k in range(3, 13)]


def experiment_b() -> list[SimOptions]:
    return [
        SimOptions(
            scenario="fail", nodes=1000, fail_fraction=p, blocks=1000, lookup_rate=10.0, duration=600.0,
            stabilize_interval=30.0, sample_interval=10.0, seed=1,
        )
        for p in (0.1, 0.2, 0.3, 0.4, 0.5)
    ]


def experiment_c() -> list[SimOptions]:
    return [
        SimOptions(
            scenario="churn", nodes=500, rate=r, blocks=1000, lookup_rate=1.0, duration=7200.0,
            stabilize_interval=30.0, sample_interval=60.0, seed=1,
        )
        for r in (0.01, 0.02, 0.05, 0.1)
    ]


EXPERIMENTS = {"a": experiment_a, "b": experiment_b, "c": experiment_c}


def run_one(options: SimOptions) -> dict[str, Any]:
    summary, series, _ = run_detailed(options)
    return {"summary": summary, "series": series}


def name_of(options: SimOptions) -> str:
    detail = {"static": f"n{options.nodes}", "fail": f"p{options.fail_fraction}", "churn": f"r{options.rate}"}
    return f"{options.scenario}-{detail[options.scenario]}"


def failure_rate(summary: dict[str, Any]) -> float:
    return 1.0 - summary["correct_rate"]


def early_failure_rate(series: list[dict[str, Any]]) -> float:
    """Lookup failures in the first sample after the crash (before the ring heals)."""
    row = series[1] if len(series) > 1 else series[0]
    return (row["wrong"] + row["failed"]) / row["lookups"] if row["lookups"] else 0.0


def table_a(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| N | ½·log2 N (paper) | mean hops | p99 | correct |", "| ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        s = result["summary"]
        lines.append(f"| {s['nodes']} | {0.5 * math.log2(s['nodes']):.2f} | {s['mean_hops']:.2f} | {s['p99_hops']} | {s['correct_rate']:.4f} |")
    return lines


def table_b(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| p | paper: failures ≈ p | ours: failures in the first 10 s | ours: whole run | converged after (s) | blocks lost (r = 3) | expected ≈ p³ |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        s = result["summary"]
        p = s["fail_fraction"]
        lines.append(
            f"| {p:.1f} | {p:.2f} | {early_failure_rate(result['series']):.4f} | {failure_rate(s):.4f} | "
            f"{_seconds(s['converged_after'])} | {s['blocks_lost']} of {s['blocks']} | {p**3 * s['blocks']:.0f} |"
        )
    return lines


def _seconds(value: float | None) -> str:
    return "not within the run" if value is None else f"{value:.1f}"


def table_c(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| R (events/s) | paper: lookup failures | ours: failures | lookups | blocks lost (r = 3) | min availability | joins / crashes | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        s = result["summary"]
        bar = " (bar ≤ 0.1%: " + ("met" if failure_rate(s) <= 0.001 and s["blocks_lost"] == 0 else "MISSED") + ")" if s["rate"] == 0.05 else ""
        lines.append(
            f"| {s['rate']} | {PAPER_C} | {100 * failure_rate(s):.3f}%{bar} | {s['lookups']} | {s['blocks_lost']} | "
            f"{s['min_availability']:.4f} | {s['joins']} / {s['crashes']} | {s['wall_seconds']:.0f} |"
        )
    return lines


TABLES = {"a": table_a, "b": table_b, "c": table_c}


def plot(name: str, results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    summaries = [r["summary"] for r in results]
    if name == "a":
        n = [s["nodes"] for s in summaries]
        axes.plot(n, [s["mean_hops"] for s in summaries], "o-", label="ours: mean hops")
        axes.plot(n, [0.5 * math.log2(x) for x in n], "--", label="paper: ½·log2 N")
        axes.set(xscale="log", xlabel="nodes", ylabel="path length", title="(a) path length")
    elif name == "b":
        p = [s["fail_fraction"] for s in summaries]
        axes.plot(p, [early_failure_rate(r["series"]) for r in results], "o-", label="ours: failures before healing")
        axes.plot(p, p, "--", label="paper: about p")
        axes.set(xlabel="fraction of nodes failed", ylabel="lookup failure rate", title="(b) simultaneous failures, 1,000 nodes")
    else:
        rates = [s["rate"] for s in summaries]
        axes.plot(rates, [failure_rate(s) for s in summaries], "o-", label="ours")
        axes.fill_between(rates, 0.01, 0.03, alpha=0.2, label="paper: 1–3%")
        axes.set(xlabel="events per second", ylabel="lookup failure rate", title="(c) churn, 500 nodes, 2 h")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"{name}.png", dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="a,b,c")
    parser.add_argument("--out", default="docs/paper")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for name in args.only.split(","):
        runs = EXPERIMENTS[name]()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_one, runs))
        for options, result in zip(runs, results):
            (out / f"{name_of(options)}.json").write_text(json.dumps(result["summary"], indent=2) + "\n")
        plot(name, results, out)
        sections += [f"## ({name})", "", *TABLES[name](results), "", f"![({name})]({name}.png)", ""]
        print("\n".join(sections[-len(TABLES[name](results)) - 5 :]), flush=True)
    (out / f"results-{args.only.replace(',', '')}.md").write_text("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
