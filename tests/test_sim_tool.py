"""`chordcdn sim`: `tools.sim.run` summaries, option checking, determinism, the
lookup tally's figures, and the CLI front end.

`tools.sim.run` calls `trio.run` itself, so these tests are plain functions.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from dht.simcluster import LookupTally, percentile
from tools import cli
from tools.sim import SimOptions, run

SUMMARY_KEYS = {
    "scenario", "nodes", "lookups", "lookup_success_rate", "correct_rate", "mean_hops", "p99_hops",
    "wall_seconds", "seed", "virtual_seconds", "messages", "msgs_per_node_per_s", "bytes_per_node_per_s",
    "maintenance_bytes_per_node_per_s", "lookup_bytes_per_node_per_s", "repair_bytes_per_node_per_s",
    "p50_latency", "p99_latency", "median_rtt",
}


@pytest.fixture(scope="module")
def summary_64() -> dict[str, Any]:
    return run(SimOptions(nodes=64, lookups=500, seed=5))


def test_static_summary_has_the_report_fields(summary_64: dict[str, Any]) -> None:
    assert SUMMARY_KEYS <= summary_64.keys()
    assert summary_64["scenario"] == "static" and summary_64["nodes"] == 64 and summary_64["seed"] == 5
    assert summary_64["lookups"] == 500
    assert summary_64["lookup_success_rate"] == 1.0 and summary_64["correct_rate"] == 1.0
    assert 0 < summary_64["mean_hops"] <= 0.5 * math.log2(64)
    assert summary_64["p99_hops"] >= summary_64["mean_hops"]
    assert summary_64["messages"] > 0 and summary_64["virtual_seconds"] > 0
    expected_rate = summary_64["messages"] / (64 * summary_64["virtual_seconds"])
    assert summary_64["msgs_per_node_per_s"] == pytest.approx(expected_rate)
    json.dumps(summary_64)  # JSON-ready


def test_wire_bytes_per_node_are_split_by_what_they_are_for() -> None:
    """Encoded frames counted by purpose (issue 13): a churn run with blocks has
    all three, and they add up to the total; a node's own finger lookups count as
    maintenance, so a static run with nothing but lookups has no maintenance."""
    summary = run(SimOptions(scenario="churn", nodes=24, rate=0.1, duration=60.0, lookup_rate=2.0, blocks=20, seed=3))
    parts = [summary[f"{kind}_bytes_per_node_per_s"] for kind in ("maintenance", "lookup", "repair")]
    assert all(part > 0 for part in parts)
    assert summary["bytes_per_node_per_s"] == pytest.approx(sum(parts), abs=0.2)
    maintenance_only = run(SimOptions(scenario="churn", nodes=24, rate=0.0, duration=60.0, lookup_rate=0.0, blocks=0, seed=3))
    assert maintenance_only["lookup_bytes_per_node_per_s"] == 0  # no lookup of the load, yet fingers were looked up
    assert maintenance_only["maintenance_bytes_per_node_per_s"] > 0
    static = run(SimOptions(nodes=16, lookups=50, seed=2))
    assert static["lookup_bytes_per_node_per_s"] > 0
    assert static["maintenance_bytes_per_node_per_s"] == static["repair_bytes_per_node_per_s"] == 0


def test_latency_figures_follow_the_model() -> None:
    """p50 and p99 lookup latency and the median round trip of the model (issue 13):
    the constant model's round trip is twice its latency; geo's median is near
    150 ms, and every lookup takes at least one round trip."""
    constant = run(SimOptions(nodes=32, lookups=200, seed=4, latency=0.02))
    assert constant["median_rtt"] == pytest.approx(0.04)
    assert 0 < constant["p50_latency"] <= constant["p99_latency"]
    geo = run(SimOptions(nodes=64, lookups=300, seed=4, latency_model="geo"))
    assert 0.12 < geo["median_rtt"] < 0.18 and geo["p99_rtt"] > 1.5 * geo["median_rtt"]
    assert geo["correct_rate"] == 1.0 and geo["p50_latency"] > geo["median_rtt"] / 2


def test_lookup_deadline_fails_slow_lookups() -> None:
    """--lookup-deadline: a lookup that cannot finish in time counts as failed, not wrong."""
    hurried = run(SimOptions(nodes=64, lookups=200, seed=4, latency_model="geo", lookup_deadline=0.1))
    assert hurried["failed"] > 0 and hurried["wrong"] == 0
    assert hurried["failed"] + round(hurried["correct_rate"] * 200) == 200


def test_same_seed_repeats_exactly_and_another_seed_differs(summary_64: dict[str, Any]) -> None:
    def without_wall(summary: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in summary.items() if key != "wall_seconds"}

    again = run(SimOptions(nodes=64, lookups=500, seed=5))
    assert without_wall(again) == without_wall(summary_64)
    other = run(SimOptions(nodes=64, lookups=500, seed=6))
    assert (other["mean_hops"], other["messages"]) != (summary_64["mean_hops"], summary_64["messages"])


def test_join_build_converges_and_routes_correctly() -> None:
    summary = run(SimOptions(nodes=24, lookups=200, stabilize_interval=1.0, build="join"))
    assert summary["build"] == "join" and summary["correct_rate"] == 1.0 and summary["lookups"] == 200
    assert 0 <= summary["ring_converged_after"] <= 200 * 1.0
    assert summary["build_virtual_seconds"] >= summary["ring_converged_after"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scenario": "meteor"}, "unknown scenario"),
        ({"build": "magic"}, "unknown build"),
        ({"nodes": 0}, "at least 1"),
        ({"nodes": 257, "bits": 8}, "do not fit a 8-bit ring"),
    ],
)
def test_sim_options_reject_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimOptions(**options)


# -- tally figures ------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    ten = list(range(1, 11))
    assert percentile([], 0.5) == 0
    assert percentile([7], 0.99) == 7
    assert [percentile(ten, f) for f in (0.0, 0.1, 0.15, 0.5, 0.51, 0.9, 0.99, 1.0)] == [1, 1, 2, 5, 6, 9, 10, 10]
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile(list(range(1, 1001)), 0.5) == 500


def test_percentile_nearest_rank_survives_float_rounding() -> None:
    assert percentile(list(range(1, 101)), 0.07) == 7


def test_tally_summary_rates_and_hops() -> None:
    tally = LookupTally(correct=6, wrong=2, failed=2, timeouts=3, hops=[4, 1, 2, 2, 3, 1, 2, 5], latencies=[0.2, 0.1, 0.4, 0.3])
    summary = tally.summary()
    assert summary["lookups"] == 10
    assert summary["lookup_success_rate"] == pytest.approx(0.8)
    assert summary["correct_rate"] == pytest.approx(0.6)
    assert (summary["wrong"], summary["failed"], summary["timeouts"]) == (2, 2, 3)
    assert summary["mean_hops"] == pytest.approx(20 / 8)
    assert (summary["p50_hops"], summary["p99_hops"], summary["max_hops"]) == (2, 5, 5)
    assert summary["mean_latency"] == pytest.approx(0.25) and summary["p99_latency"] == 0.4


def test_empty_tally_summary_is_all_zero() -> None:
    summary = LookupTally().summary()
    assert summary["lookups"] == 0 and summary["correct_rate"] == 0 and summary["lookup_success_rate"] == 0
    assert summary["mean_hops"] == 0.0 and summary["p99_hops"] == 0 and summary["max_hops"] == 0


# -- the CLI -------------------------------------------------------------------------------


def test_cli_sim_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--nodes", "32", "--lookups", "100", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["nodes"] == 32 and summary["lookups"] == 100 and summary["correct_rate"] == 1.0


def test_cli_sim_too_many_nodes_for_bits_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--nodes", "100000", "--bits", "8"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("chordcdn sim: ") and "100000 nodes do not fit a 8-bit ring" in captured.err
