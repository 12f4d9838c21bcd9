"""`chordcdn sim sweep`: one scenario over a grid of settings, run in parallel.

Owns the grid (every combination of the `--grid NAME=V1,V2,...` values laid over
the base options), where the runs go (a process per local core, or the workers
of a Dask distributed cluster when given a scheduler's address), and gathering
their summaries into one table. Each run is `tools.sim.run` with its own
options, so a grid point gives the same figures wherever it runs. The table and
its plots are written by `tools.simreport`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .sim import SimOptions, run
from .simtime import parse_duration

# Figures kept in the table, beside the grid's own columns.
FIGURES = (
    "lookups", "correct_rate", "wrong", "failed", "p50_latency", "p99_latency", "median_rtt", "mean_hops",
    "blocks_lost", "maintenance_bytes_per_node_per_s", "lookup_bytes_per_node_per_s", "repair_bytes_per_node_per_s",
    "wall_seconds",
)
GRIDDABLE = {field.name: field.type for field in dataclasses.fields(SimOptions) if field.name != "events"}


class SweepError(ValueError):
    """A grid that cannot be run: an unknown setting or a value it cannot take."""


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """{"session_median": [84.0, 3600.0], ...} from ["session_median=1.4m,1h", ...]."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if name not in GRIDDABLE or not values:
            known = ", ".join(sorted(GRIDDABLE))
            raise SweepError(f"--grid takes NAME=V1,V2,... with NAME one of: {known}")
        if name in grid:
            raise SweepError(f"--grid names {name} twice")
        grid[name] = [_value(name, text.strip()) for text in values.split(",")]
    return grid


def _value(name: str, text: str) -> Any:
    kind = GRIDDABLE[name]
    try:
        if kind == "int":  # field types are strings: tools.sim postpones annotations
            return int(text)
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                return parse_duration(text)  # 1.4m, 1h
    except ValueError as exc:
        raise SweepError(f"--grid {name}: {exc}") from None
    return text


def points(base: SimOptions, grid: dict[str, list[Any]]) -> list[SimOptions]:
    """Every combination of the grid's values laid over `base`, checked."""
    names = list(grid)
    chosen = []
    for values in itertools.product(*(grid[name] for name in names)):
        try:
            chosen.append(dataclasses.replace(base, **dict(zip(names, values))))
        except ValueError as exc:
            raise SweepError(f"grid point {dict(zip(names, values))}: {exc}") from None
    return chosen


def run_grid(options: list[SimOptions], workers: int | None = None, scheduler: str | None = None) -> list[dict[str, Any]]:
    """Run every grid point, on local processes or on a Dask cluster; summaries in grid order."""
    if scheduler is not None:
        from distributed import Client  # optional: only a sweep on a cluster needs it

        with Client(scheduler) as client:
            return client.gather(client.map(run, options, pure=False))
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(run, options))


def table(grid: dict[str, list[Any]], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid point: its grid values, then the figures."""
    return [{**{name: summary[name] for name in grid}, **{key: summary.get(key) for key in FIGURES}} for summary in summaries]
