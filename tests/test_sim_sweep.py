"""`chordcdn sim sweep` (issue 13): a grid of scenarios on local processes and on
a Dask distributed cluster (Dask's LocalCluster here), one table and its plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools import cli
from tools.sim import SimOptions
from tools.simsweep import SweepError, parse_grid, points, run_grid, table

BASE = SimOptions(nodes=16, lookups=60, seed=3)


def without_wall(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key != "wall_seconds"} for row in rows]


def test_a_grid_is_every_combination_of_its_values() -> None:
    grid = parse_grid(["session-median=1.4m,1h", "replicas=3,5"])
    assert grid == {"session_median": [84.0, 3600.0], "replicas": [3, 5]}
    chosen = points(SimOptions(scenario="churn"), grid)
    assert [(o.session_median, o.replicas) for o in chosen] == [(84.0, 3), (84.0, 5), (3600.0, 3), (3600.0, 5)]


@pytest.mark.parametrize(
    "specs, message",
    [
        (["colour=red"], "NAME one of"),
        (["nodes"], "NAME one of"),
        (["nodes=8", "nodes=16"], "twice"),
        (["nodes=many"], "--grid nodes"),
        (["latency_model=moon"], "unknown latency model"),
    ],
)
def test_a_bad_grid_is_refused_with_a_clear_error(specs: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        points(BASE, parse_grid(specs))


def test_a_sweep_on_a_dask_cluster_gives_the_local_figures() -> None:
    """The same grid point is the same run wherever it runs: the figures from a
    Dask LocalCluster equal those from local processes."""
    from distributed import LocalCluster

    grid = {"nodes": [8, 16], "seed": [1, 2]}
    chosen = points(BASE, grid)
    local = table(grid, run_grid(chosen, workers=2))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = table(grid, run_grid(chosen, scheduler=cluster.scheduler_address))
    assert without_wall(remote) == without_wall(local)
    assert [(row["nodes"], row["seed"]) for row in local] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert all(row["correct_rate"] == 1.0 and row["lookups"] == 60 for row in local)


def test_the_sweep_command_writes_one_table_and_its_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    code = cli.main(["sim", "sweep", "--grid", "nodes=8,16", "--lookups", "40", "--workers", "2", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["nodes"] for row in printed["rows"]] == [8, 16]
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("nodes,lookups,correct_rate")
    assert json.loads((out / "sweep.json").read_text())["rows"] == printed["rows"]
    assert (out / "sweep_correct_rate.png").stat().st_size > 0


def test_the_sweep_command_refuses_a_missing_or_bad_grid(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "sweep", "--lookups", "10"]) == 2
    assert "needs at least one --grid" in capsys.readouterr().err
    assert cli.main(["sim", "--grid", "nodes=8,16"]) == 2
    assert "is for `chordcdn sim sweep`" in capsys.readouterr().err
