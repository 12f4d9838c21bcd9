"""Parsing the simulator's time and rate arguments. Pure."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'2h', '90m', '3600s', '1.5h' or a plain number of seconds → seconds (> 0)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise ValueError(f"duration {text!r} is not a number with an optional h, m or s (e.g. 2h, 90m, 3600s, 3600)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return seconds


def parse_fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(f"{text!r} is not a fraction between 0 and 1")
    return value


def parse_rate(text: str) -> float:
    """Events per virtual second, >= 0."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"rate {text!r} must be a finite number")
    if value < 0:
        raise ValueError(f"rate {text!r} must not be negative")
    return value
