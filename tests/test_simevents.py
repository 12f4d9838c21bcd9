"""Scenario files of fixed events: parsing, errors, and playing them in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.cli import main
from tools.sim import SimOptions, run_detailed
from tools.simevents import BadEvents, Crash, Partition, load_events, parse_events


def test_events_parse_and_sort_by_time() -> None:
    events = parse_events(
        [
            {"at": 90, "partition": ["sim-1"], "for": 5},
            {"at": 10, "crash": 3},
            {"at": 50, "crash": ["sim-2", "sim-9"]},
            {"at": 70, "partition": 0.25, "for": 30.5},
        ]
    )
    assert events == [
        Crash(10.0, count=3),
        Crash(50.0, addresses=("sim-2", "sim-9")),
        Partition(70.0, 30.5, fraction=0.25),
        Partition(90.0, 5.0, addresses=("sim-1",)),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"at": 1, "crash": 1}, "JSON list"),
        ([{"crash": 1}], '"at"'),
        ([{"at": -1, "crash": 1}], '"at"'),
        ([{"at": 1}], '"crash" or "partition"'),
        ([{"at": 1, "crash": 0}], "non-empty list"),
        ([{"at": 1, "crash": []}], "non-empty list"),
        ([{"at": 1, "crash": True}], "non-empty list"),
        ([{"at": 1, "partition": 0.3}], '"for"'),
        ([{"at": 1, "partition": 1.5, "for": 3}], "strictly between 0 and 1"),
        ([{"at": 1, "partition": [1, 2], "for": 3}], "non-empty list"),
    ],
)
def test_bad_events_are_refused_with_the_reason(raw: object, message: str) -> None:
    with pytest.raises(BadEvents, match=message):
        parse_events(raw)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    for path in (broken, tmp_path / "missing.json"):
        with pytest.raises(BadEvents, match="cannot read scenario file"):
            load_events(path)


def test_events_are_played_at_their_times(tmp_path: Path) -> None:
    events = tuple(parse_events([{"at": 25, "crash": 4}, {"at": 45, "partition": 0.2, "for": 10}]))
    options = SimOptions(
        scenario="churn", nodes=30, rate=0.0, blocks=40, lookup_rate=1.0, duration=80.0,
        stabilize_interval=5.0, sample_interval=10.0, events=events, seed=2,
    )
    summary, series, _ = run_detailed(options)
    assert summary["crashes"] == 4 and summary["joins"] == 0
    live = [row["live_nodes"] for row in series]
    assert live[:2] == [30, 30] and live[-1] == 26  # the crash came between 20 s and 30 s


def test_a_healed_partition_leaves_every_lookup_correct_again() -> None:
    events = tuple(parse_events([{"at": 60, "partition": 0.3, "for": 60}]))
    options = SimOptions(
        scenario="churn", nodes=50, rate=0.0, blocks=100, lookup_rate=1.0, duration=600.0,
        stabilize_interval=30.0, sample_interval=10.0, events=events, seed=1,
    )
    summary, series, _ = run_detailed(options)
    assert summary["wrong"] > 0  # the cut-off side ran a ring of its own
    last_five_minutes = [row for row in series if row["t"] > 300]
    assert all(row["wrong"] == 0 and row["failed"] == 0 for row in last_five_minutes)
    assert sum(row["lookups"] for row in last_five_minutes) > 200


def test_the_command_line_takes_a_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "events.json"
    scenario.write_text(json.dumps([{"at": 5, "crash": 2}]))
    args = ["sim", "--scenario", "fail", "--fail-fraction", "0", "--nodes", "20", "--blocks", "10",
            "--duration", "30", "--stabilize-interval", "5", "--events", str(scenario), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["events"][0]["count"] == 2
    scenario.write_text("{}")
    assert main(args) == 2
    assert "JSON list" in capsys.readouterr().err
