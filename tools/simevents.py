"""Scenario files for `chordcdn sim --events FILE`: fixed events at fixed times. Pure.

A file is a JSON list of events; `at` is virtual seconds after the measured phase
begins (once the ring is built and the blocks are stored):

    [{"at": 60,  "crash": 5},                       five random live nodes crash
     {"at": 90,  "crash": ["sim-3", "sim-17"]},      these nodes crash
     {"at": 120, "partition": 0.3, "for": 60},       30% of the nodes are cut off for 60 s
     {"at": 300, "partition": ["sim-1", "sim-2"], "for": 30}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BadEvents(ValueError):
    """A scenario file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Crash:
    at: float
    count: int = 0
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Partition:
    at: float
    span: float
    fraction: float = 0.0
    addresses: tuple[str, ...] = ()


Event = Crash | Partition


def load_events(path: str | Path) -> list[Event]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadEvents(f"cannot read scenario file {path}: {exc}") from None
    return parse_events(raw)


def parse_events(raw: Any) -> list[Event]:
    """Validate a decoded scenario file; events come back sorted by time."""
    if not isinstance(raw, list):
        raise BadEvents("a scenario file is a JSON list of events")
    return sorted((_event(index, item) for index, item in enumerate(raw)), key=lambda event: event.at)


def _event(index: int, item: Any) -> Event:
    where = f"event {index}"
    if not isinstance(item, dict) or not isinstance(item.get("at"), (int, float)) or item["at"] < 0:
        raise BadEvents(f"{where}: needs \"at\", a number of seconds >= 0")
    if "crash" in item:
        target = item["crash"]
        if isinstance(target, int) and not isinstance(target, bool) and target > 0:
            return Crash(float(item["at"]), count=target)
        return Crash(float(item["at"]), addresses=_addresses(target, where))
    if "partition" in item:
        span = item.get("for")
        if not isinstance(span, (int, float)) or span <= 0:
            raise BadEvents(f"{where}: a partition needs \"for\", a positive number of seconds")
        target = item["partition"]
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            if not 0 < target < 1:
                raise BadEvents(f"{where}: a partition fraction must lie strictly between 0 and 1")
            return Partition(float(item["at"]), float(span), fraction=float(target))
        return Partition(float(item["at"]), float(span), addresses=_addresses(target, where))
    raise BadEvents(f"{where}: say \"crash\" or \"partition\"")


def _addresses(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise BadEvents(f"{where}: give a positive count (or fraction) or a non-empty list of node addresses")
    return tuple(value)
