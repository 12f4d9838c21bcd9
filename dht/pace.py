"""How often a node repairs its routing state, from the churn it sees.

Owns the adaptive pace of maintenance. A node notes each time its successor or
predecessor changes (a neighbour died, left or joined). The changes it remembers,
over the time since the oldest of them, give the mean gap between changes in its
neighbourhood (before any change, the time observed so far: no evidence of a quiet
ring yet); rounds of maintenance then come `ROUNDS_PER_CHANGE` times per gap.
The configured intervals are the ceiling, so a quiet ring costs what it always
did, and `floor` seconds of stabilize interval is the limit the other way. Fixed
intervals either waste bandwidth on a quiet ring or fall behind a churning one
(Bamboo's lesson); a node of a churning ring now finds a dead successor long
before the next one dies. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from typing import Hashable

ROUNDS_PER_CHANGE = 10  # stabilize rounds per expected change of a neighbour
MEMORY = 8  # changes remembered


class ChurnPace:
    """Scale for maintenance intervals: 1 when nothing changes, down to
    `floor / interval` when the neighbourhood changes every few rounds."""

    def __init__(self, interval: float, floor: float) -> None:
        if not 0 < floor <= interval:
            raise ValueError("the fastest stabilize interval must be positive and at most the configured one")
        self.interval, self.floor = interval, floor
        self._changes: deque[float] = deque(maxlen=MEMORY)
        self._since: float | None = None  # the start of the span the remembered changes fall in
        self._state: Hashable = None

    @property
    def adaptive(self) -> bool:
        return self.floor < self.interval

    def observe(self, state: Hashable, now: float) -> None:
        """Note the neighbourhood as it is now (say, the successor's and the
        predecessor's IDs); a state unlike the last one counts as a change."""
        if self._since is None:
            self._since = now
        elif state != self._state:
            if len(self._changes) == MEMORY:
                self._since = self._changes[0]
            self._changes.append(now)
        self._state = state

    def mean_gap(self, now: float) -> float | None:
        """Seconds between changes, estimated; None before the first observation.
        Before any change the time observed so far stands in for the gap, so a new
        node starts fast and slows down as quiet time accumulates, rather than
        starting slow and falling behind a churning ring before it notices."""
        if self._since is None:
            return None
        return max(now - self._since, 0.0) / max(len(self._changes), 1)

    def scale(self, now: float) -> float:
        """The factor for every maintenance interval now, in [floor / interval, 1]."""
        gap = self.mean_gap(now)
        if gap is None or not self.adaptive:
            return 1.0
        wanted = gap / ROUNDS_PER_CHANGE
        return min(max(wanted, self.floor), self.interval) / self.interval
