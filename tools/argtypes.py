"""argparse value checkers shared by the command line and the benchmarks."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def integer(low: int, high: int) -> Callable[[str], int]:
    """An integer in low..high."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {text}")
        return value

    return parse


def positive(high: float = math.inf) -> Callable[[str], float]:
    """A number greater than zero and at most `high`."""

    def parse(text: str) -> float:
        value = float(text)
        if not 0 < value <= high:
            bound = "" if high == math.inf else f" and at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be positive{bound}, got {text}")
        return value

    return parse
