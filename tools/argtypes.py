"""argparse value checkers shared by the command line and the benchmarks."""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable, TypeVar

from dht.addresses import split_address

T = TypeVar("T")


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


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def byte_size(text: str) -> int:
    """A size such as 4096, 512k, 256MiB or 2GB (k, M, G are powers of 1000; KiB, MiB, GiB of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"size {text!r} is not a number with an optional unit (k, M, G, KiB, MiB, GiB)")
    unit = match.group(2).lower()
    if unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"size {text!r}: unknown unit {unit!r} (use k, M, G, KiB, MiB or GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises ValueError with the reason."""

    def check(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


def _checked_address(text: str) -> str:
    split_address(text)
    return text


address = checked(_checked_address)  # HOST:PORT
host_and_port = checked(split_address)
