"""How evenly keys spread over machines: the figures of the Chord paper's
load-balance experiment (§6.1, Figures 8 and 9).

Owns nearest-rank percentiles (for the simulator's other figures too), and
counting keys per machine when each key goes to the ring position that
follows it and each position belongs to a machine (with virtual nodes, several
positions share one), and summarizing the counts: mean, 1st and 99th percentile,
largest, and the 99th percentile and largest over the mean. Machines that own no
key count as zeros. Pure: no I/O, no time, no randomness.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence


def keys_per_machine(positions: Sequence[tuple[int, str]], keys: Iterable[int]) -> dict[str, int]:
    """Keys owned by each machine: `positions` are (ring ID, machine) pairs in ID
    order; a key belongs to the first position at or after it, wrapping round."""
    if not positions:
        raise ValueError("a ring needs at least one position")
    ids = [ident for ident, _ in positions]
    counts = dict.fromkeys((machine for _, machine in positions), 0)
    for key in keys:
        index = bisect.bisect_left(ids, key)
        counts[positions[index % len(positions)][1]] += 1
    return counts


def percentile(ordered: Sequence, fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(round(len(ordered) * fraction, 9)))  # round away float noise first
    return ordered[min(rank, len(ordered)) - 1]


def load_figures(counts: Iterable[int]) -> dict[str, float]:
    """Mean, 1st and 99th percentile and largest count, and the spread as
    multiples of the mean (`load_p99_over_mean`, as `chordcdn sim` reports it)."""
    ordered = sorted(counts)
    if not ordered:
        raise ValueError("no machines to summarize")
    mean = sum(ordered) / len(ordered)
    p1, p99, largest = percentile(ordered, 0.01), percentile(ordered, 0.99), ordered[-1]
    scale = mean or 1.0
    return {
        "load_mean": mean,
        "load_p1": p1,
        "load_p99": p99,
        "load_max": largest,
        "load_p1_over_mean": p1 / scale,
        "load_p99_over_mean": p99 / scale,
        "load_max_over_mean": largest / scale,
    }
