"""The simulator's argument parsers (`tools.simtime`) on their own and through
`chordcdn sim`, where a bad value is an argparse usage error (exit code 2)."""

from __future__ import annotations

import pytest

from tools.cli import main
from tools.simtime import parse_duration, parse_fraction, parse_rate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2h", 7200.0),
        ("90m", 5400.0),
        ("3600s", 3600.0),
        ("3600", 3600.0),
        ("1.5h", 5400.0),
        (" 2H ", 7200.0),
        ("45S", 45.0),
        ("0.5", 0.5),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "0", "0s", "0.0h", "2d", "1h30m", "abc", "1e3", "nan", "inf"])
def test_parse_duration_rejects_and_names_the_text(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("1", 1.0), ("0.25", 0.25), (" 0.5 ", 0.5), ("1.0", 1.0)])
def test_parse_fraction_accepts_the_closed_unit_interval(text: str, value: float) -> None:
    assert parse_fraction(text) == value


@pytest.mark.parametrize("text", ["-0.01", "1.0001", "1.5", "2", "nan", "inf", "-inf"])
def test_parse_fraction_rejects_out_of_bounds(text: str) -> None:
    with pytest.raises(ValueError, match="between 0 and 1") as caught:
        parse_fraction(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["", "abc", "1/2"])
def test_parse_fraction_and_rate_reject_non_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fraction(text)
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("0.05", 0.05), ("12", 12.0), ("1e3", 1000.0)])
def test_parse_rate_accepts_non_negative(text: str, value: float) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["-1", "-0.001"])
def test_parse_rate_rejects_negative(text: str) -> None:
    with pytest.raises(ValueError, match="must not be negative") as caught:
        parse_rate(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_parse_rate_rejects_non_finite(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--duration", "2d", "'2d'"),
        ("--duration", "0", "longer than zero"),
        ("--sample-interval", "5x", "'5x'"),
        ("--fail-fraction", "1.5", "between 0 and 1"),
        ("--rate", "-1", "must not be negative"),
        ("--lookup-rate", "-0.5", "must not be negative"),
        ("--graceful-fraction", "2", "between 0 and 1"),
    ],
)
def test_cli_sim_rejects_bad_values_as_usage_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["sim", flag, value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert message in err
