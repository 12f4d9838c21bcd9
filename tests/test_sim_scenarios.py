"""`chordcdn sim` scenarios end to end: static, fail and churn runs, their
summaries and time series, seed determinism, option checking and the files
written by `--out`.

`tools.sim.run` and `run_detailed` call `trio.run` themselves, so these tests are
plain synchronous functions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tools.cli import main
from tools.sim import SimOptions, run, run_detailed

Result = tuple[dict[str, Any], list[dict[str, Any]], list[int]]

SUMMARY_KEYS = {
    "scenario", "nodes", "virtual_seconds", "wall_seconds", "lookups", "lookup_success_rate", "correct_rate",
    "mean_hops", "p99_hops", "timeouts", "blocks", "blocks_lost", "min_availability", "msgs_per_node_per_s", "seed",
}
SERIES_COLUMNS = ["t", "live_nodes", "lookups", "correct", "wrong", "failed", "availability", "blocks_lost", "messages"]

FAIL = SimOptions(
    scenario="fail", nodes=40, fail_fraction=0.25, blocks=100, lookup_rate=2, duration=120,
    stabilize_interval=5, sample_interval=10, repair_interval=10,
)
CHURN = SimOptions(
    scenario="churn", nodes=40, rate=0.1, blocks=100, lookup_rate=1, duration=300,
    stabilize_interval=5, sample_interval=20, repair_interval=10, graceful_fraction=0.5,
)
# Durations that are not multiples of the sample interval keep the recorder's last
# sample off the end instant (see test_samples_avoid_the_crash_and_end_instants).
SMALL_FAIL = dict(
    scenario="fail", nodes=20, fail_fraction=0.25, blocks=30, lookup_rate=1, duration=65,
    stabilize_interval=5, sample_interval=10, repair_interval=10,
)
SMALL_CHURN = dict(
    scenario="churn", nodes=20, rate=0.1, blocks=30, lookup_rate=1, duration=100,
    stabilize_interval=5, sample_interval=15, repair_interval=10, graceful_fraction=0.5,
)


@pytest.fixture(scope="module")
def static_run() -> Result:
    return run_detailed(SimOptions(nodes=32, lookups=200))


@pytest.fixture(scope="module")
def fail_run() -> Result:
    return run_detailed(FAIL)


@pytest.fixture(scope="module")
def churn_run() -> Result:
    return run_detailed(CHURN)


def assert_common_summary(summary: dict[str, Any], options: SimOptions) -> None:
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["scenario"] == options.scenario
    assert summary["nodes"] == options.nodes and summary["seed"] == options.seed
    for rate in ("lookup_success_rate", "correct_rate", "min_availability"):
        assert 0.0 <= summary[rate] <= 1.0, rate
    assert summary["virtual_seconds"] > 0 and summary["wall_seconds"] > 0
    assert summary["msgs_per_node_per_s"] > 0
    assert summary["lookups"] > 0 and summary["p99_hops"] >= summary["mean_hops"] > 0
    json.dumps(summary)  # JSON-ready


def assert_series_sane(summary: dict[str, Any], series: list[dict[str, Any]]) -> None:
    assert series
    assert all(list(row) == SERIES_COLUMNS for row in series)
    assert all(0.0 <= row["availability"] <= 1.0 for row in series)
    lost = [row["blocks_lost"] for row in series]
    assert lost == sorted(lost), "blocks_lost must never decrease"
    assert [row["t"] for row in series] == sorted(row["t"] for row in series)
    assert all(row["lookups"] == row["correct"] + row["wrong"] + row["failed"] for row in series)
    # the rows partition the run: their lookups add up to the summary's
    assert sum(row["lookups"] for row in series) == summary["lookups"]
    assert sum(row["correct"] for row in series) == round(summary["correct_rate"] * summary["lookups"])
    assert summary["blocks_lost"] == lost[-1]
    assert summary["min_availability"] == min(row["availability"] for row in series)
    assert sum(row["messages"] for row in series) <= summary["messages"]


# -- each scenario ----------------------------------------------------------------------


def test_static_scenario(static_run: Result) -> None:
    summary, series, hops = static_run
    assert_common_summary(summary, SimOptions(nodes=32, lookups=200))
    assert summary["lookups"] == 200 == len(hops)
    assert summary["lookup_success_rate"] == 1.0 and summary["correct_rate"] == 1.0
    assert summary["blocks"] == 0 and summary["blocks_lost"] == 0 and summary["min_availability"] == 1.0
    assert series == []


def test_fail_scenario_summary(fail_run: Result) -> None:
    summary, series, hops = fail_run
    assert_common_summary(summary, FAIL)
    assert summary["blocks"] == 100
    assert 0 <= summary["blocks_lost"] <= 100
    assert isinstance(summary["converged_after"], (int, float)) and not isinstance(summary["converged_after"], bool)
    assert 0 <= summary["converged_after"] <= FAIL.duration
    assert len(hops) == summary["lookups"] - summary["failed"]


def test_fail_scenario_crashes_a_quarter(fail_run: Result) -> None:
    summary, series, _ = fail_run
    assert_series_sane(summary, series)
    live = [row["live_nodes"] for row in series]
    crashed = round(0.25 * 40)
    assert live[0] == 40  # sampled just before the crash, always
    assert live[1:] == [40 - crashed] * (len(live) - 1) == [30] * (len(live) - 1)
    assert summary["mean_live_nodes"] < 40


def test_churn_scenario(churn_run: Result) -> None:
    summary, series, hops = churn_run
    assert_common_summary(summary, CHURN)
    assert_series_sane(summary, series)
    assert summary["blocks"] == 100
    assert summary["joins"] + summary["crashes"] + summary["leaves"] > 0
    assert summary["leaves"] > 0 and summary["crashes"] > 0  # graceful_fraction 0.5 gives both
    assert min(row["live_nodes"] for row in series) >= 4


def test_churn_counts_reconcile_with_live_nodes(churn_run: Result) -> None:
    summary, series, _ = churn_run
    assert series[-1]["live_nodes"] == 40 + summary["joins"] - summary["crashes"] - summary["leaves"]


def test_samples_are_evenly_spaced_and_never_repeat(fail_run: Result) -> None:
    _, series, _ = fail_run
    times = [row["t"] for row in series]
    gaps = {round(later - earlier, 6) for earlier, later in zip(times, times[1:])}
    assert gaps == {FAIL.sample_interval}


# -- determinism -------------------------------------------------------------------------


def comparable(result: Result) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    summary, series, hops = result
    return {key: value for key, value in summary.items() if key != "wall_seconds"}, series, hops


@pytest.mark.parametrize("settings", [SMALL_FAIL, SMALL_CHURN], ids=["fail", "churn"])
def test_same_seed_same_run(settings: dict[str, Any]) -> None:
    first = comparable(run_detailed(SimOptions(**settings, seed=7)))
    second = comparable(run_detailed(SimOptions(**settings, seed=7)))
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert first[2] == second[2]
    other = comparable(run_detailed(SimOptions(**settings, seed=8)))
    assert other[0]["seed"] == 8
    assert ({**other[0], "seed": 7}, other[1], other[2]) != first


# -- data safety and option checking ------------------------------------------------


def test_no_failures_lose_nothing() -> None:
    summary = run(SimOptions(**(SMALL_FAIL | {"fail_fraction": 0.0, "replicas": 3})))
    assert summary["blocks"] == 30
    assert summary["blocks_lost"] == 0 and summary["min_availability"] == 1.0
    assert summary["correct_rate"] == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {"fail_fraction": 1.0},
        {"fail_fraction": -0.1},
        {"graceful_fraction": 1.5},
        {"rate": -1.0},
        {"lookup_rate": -0.5},
        {"duration": 0},
        {"sample_interval": 0},
        {"blocks": -1},
        {"replicas": 0},
        {"scenario": "flood"},
        {"nodes": 0},
    ],
)
def test_options_reject_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimOptions(**bad)


# -- the CLI and its files ----------------------------------------------------------------


def test_cli_writes_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "sim", "--scenario", "fail", "--nodes", "20", "--fail-fraction", "0.25", "--blocks", "30",
        "--lookup-rate", "1", "--duration", "1m", "--stabilize-interval", "5", "--sample-interval", "10",
        "--repair-interval", "10", "--seed", "3", "--out", str(tmp_path), "--json",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == printed
    assert summary["scenario"] == "fail" and summary["nodes"] == 20 and summary["seed"] == 3
    assert summary["duration"] == 60.0

    with (tmp_path / "series.csv").open(newline="") as source:
        rows = list(csv.DictReader(source))
    assert rows and list(rows[0]) == SERIES_COLUMNS
    assert int(rows[0]["live_nodes"]) in (20, 15)  # the crash and the first sample share an instant
    assert int(rows[-1]["live_nodes"]) == 15
    assert float(rows[-1]["t"]) == pytest.approx(summary["virtual_seconds"], abs=1e-3)

    with (tmp_path / "hops.csv").open(newline="") as source:
        histogram = list(csv.DictReader(source))
    assert histogram and list(histogram[0]) == ["hops", "lookups"]
    assert sum(int(row["lookups"]) for row in histogram) == summary["lookups"] - summary["failed"]

    for name in ("failures.png", "live_nodes.png", "hops.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
