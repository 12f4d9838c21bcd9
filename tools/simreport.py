"""Writing a simulation's results: the time series as CSV and the plots as PNG,
and a sweep's table with a plot of each figure across the grid.

Owns files under `--out DIR`. matplotlib is imported only here, with the Agg
back end, so a run without --out never loads it.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any


def write_outputs(summary: dict[str, Any], series: list[dict[str, Any]], hops: list[int], directory: Path) -> list[Path]:
    """Write summary.json, series.csv, hops.csv and the PNG plots; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [_write_json(summary, directory / "summary.json")]
    if series:
        written.append(_write_csv(series, directory / "series.csv"))
    histogram = sorted(Counter(hops).items())
    written.append(_write_csv([{"hops": h, "lookups": n} for h, n in histogram], directory / "hops.csv"))
    written.extend(_plots(summary, series, histogram, directory))
    return written


SWEEP_PLOTS = ("correct_rate", "blocks_lost", "maintenance_bytes_per_node_per_s", "p99_latency")


def write_sweep_outputs(grid: dict[str, list[Any]], rows: list[dict[str, Any]], directory: Path) -> list[Path]:
    """sweep.json, sweep.csv, and per figure a plot against the grid's first
    setting, one line per combination of the others."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [_write_json({"grid": grid, "rows": rows}, directory / "sweep.json"), _write_csv(rows, directory / "sweep.csv")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, others = list(grid)[0], list(grid)[1:]
    lines: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault(tuple(row[name] for name in others), []).append(row)
    for figure_name in SWEEP_PLOTS:
        if all(row.get(figure_name) is None for row in rows):
            continue
        figure, axes = plt.subplots(figsize=(8, 4))
        for key, members in lines.items():
            label = ", ".join(f"{name}={value}" for name, value in zip(others, key)) or figure_name
            axes.plot([row[first] for row in members], [row[figure_name] for row in members], marker="o", label=label)
        axes.set(xlabel=first, ylabel=figure_name, title=f"{figure_name} against {first}")
        axes.legend()
        written.append(_save(figure, directory / f"sweep_{figure_name}.png"))
    plt.close("all")
    return written


def _write_json(summary: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _plots(summary: dict[str, Any], series: list[dict[str, Any]], histogram: list[tuple[int, int]], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{summary['scenario']}: {summary['nodes']} nodes, seed {summary['seed']}"
    paths = []
    if series:
        times = [row["t"] for row in series]
        failure = [(row["wrong"] + row["failed"]) / row["lookups"] if row["lookups"] else 0.0 for row in series]
        figure, axes = plt.subplots(figsize=(8, 4))
        axes.plot(times, failure, label="lookup failures (wrong or failed)")
        axes.plot(times, [1 - row["availability"] for row in series], label="blocks unavailable")
        axes.set(xlabel="virtual seconds", ylabel="fraction", title=title)
        axes.legend()
        paths.append(_save(figure, directory / "failures.png"))
        figure, axes = plt.subplots(figsize=(8, 4))
        axes.plot(times, [row["live_nodes"] for row in series])
        axes.set(xlabel="virtual seconds", ylabel="live nodes", title=title)
        paths.append(_save(figure, directory / "live_nodes.png"))
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.bar([h for h, _ in histogram], [n for _, n in histogram])
    axes.set(xlabel="hops", ylabel="lookups", title=f"{title}: path lengths")
    paths.append(_save(figure, directory / "hops.png"))
    plt.close("all")
    return paths


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
