"""Churn by session lengths: `chordcdn sim --scenario churn --session-median T`."""

from __future__ import annotations

import random
import statistics

import pytest

from tools.sim import SimOptions, run
from tools.simscenarios import session_sampler

SMALL = dict(
    scenario="churn", nodes=30, session_median=300.0, blocks=40, lookup_rate=1.0, duration=1200.0,
    stabilize_interval=5.0, sample_interval=60.0, repair_interval=10.0,
)


@pytest.mark.parametrize("distribution", ["exponential", "pareto"])
def test_sessions_have_the_requested_median_and_mean(distribution: str) -> None:
    draw, mean = session_sampler(600.0, distribution, random.Random(1))
    samples = [draw() for _ in range(40_000)]
    assert statistics.median(samples) == pytest.approx(600.0, rel=0.03)
    if distribution == "exponential":
        assert statistics.fmean(samples) == pytest.approx(mean, rel=0.03)
    assert mean > 600.0  # both are skewed: the mean lies above the median


@pytest.mark.parametrize("distribution", ["exponential", "pareto"])
def test_session_churn_turns_the_ring_over_and_keeps_its_size(distribution: str) -> None:
    summary = run(SimOptions(**SMALL, sessions=distribution, seed=3))
    departures = summary["crashes"] + summary["leaves"]
    _, mean = session_sampler(300.0, distribution, random.Random(0))
    expected = 30 * 1200.0 / mean  # N × duration / mean session
    assert 0.5 * expected <= departures <= 1.6 * expected
    assert 0.6 * 30 <= summary["mean_live_nodes"] <= 1.4 * 30
    assert summary["lookups"] > 0 and 0.0 <= summary["correct_rate"] <= 1.0


def test_session_churn_is_deterministic() -> None:
    first, second = (run(SimOptions(**SMALL, seed=9)) for _ in range(2))
    first.pop("wall_seconds"), second.pop("wall_seconds")
    assert first == second


@pytest.mark.parametrize("settings", [{"sessions": "weibull"}, {"session_median": -1.0}, {"session_median": float("inf")}])
def test_bad_session_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimOptions(**{**SMALL, **settings})
