"""Round-trip times measured per peer, and the call timeouts that follow from them.

Owns RFC 6298's estimator: a smoothed round-trip time and its mean deviation,
kept for each peer. A call to a known peer waits for its smoothed time plus four
deviations; a call to a peer never measured waits for twice the longest of the
recent round trips to any peer, since peers differ far more than one peer's
round trips do (a near peer's figure would give up on a far one); until enough
round trips are known for that, for the ceiling. Timeouts lie between a
floor and a ceiling. Fixed timeouts either wait out a dead node far longer than
a live one takes to answer, or give up on distant live ones; Bamboo showed how
much the choice matters under churn. Pure: the caller passes the measurements.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

GAIN = 1 / 8  # RFC 6298's alpha
RECENT = 64  # round trips remembered for peers never measured
ENOUGH = 16  # recent round trips needed before they speak for peers never measured
UNKNOWN_MARGIN = 2.0  # a new peer gets this many times the longest recent round trip
DEVIATION_GAIN = 1 / 4  # its beta
DEVIATIONS = 4  # its K


@dataclass(slots=True)
class Estimate:
    """One smoothed round-trip time and its mean deviation, in seconds."""

    smoothed: float
    deviation: float

    @classmethod
    def first(cls, sample: float) -> "Estimate":
        return cls(sample, sample / 2)

    def update(self, sample: float) -> None:
        self.deviation += DEVIATION_GAIN * (abs(self.smoothed - sample) - self.deviation)
        self.smoothed += GAIN * (sample - self.smoothed)

    @property
    def timeout(self) -> float:
        return self.smoothed + DEVIATIONS * self.deviation


class RoundTripTimes:
    """Estimates for up to `capacity` peers (the least recently measured goes
    first), and the recent round trips to any of them."""

    def __init__(self, floor: float, ceiling: float, capacity: int = 1024) -> None:
        if not 0 < floor <= ceiling or capacity < 1:
            raise ValueError("round-trip timeouts need 0 < floor <= ceiling and a capacity of at least 1")
        self.floor, self.ceiling, self.capacity = floor, ceiling, capacity
        self._peers: dict[str, Estimate] = {}
        self._recent: deque[float] = deque(maxlen=RECENT)

    def observe(self, peer: str, seconds: float) -> None:
        """Count one answered call to `peer` that took `seconds`."""
        if not seconds >= 0:
            return
        estimate = self._peers.pop(peer, None)
        if estimate is None:
            estimate = Estimate.first(seconds)
            if len(self._peers) >= self.capacity:
                del self._peers[next(iter(self._peers))]
        else:
            estimate.update(seconds)
        self._peers[peer] = estimate
        self._recent.append(seconds)

    def smoothed(self, peer: str) -> float | None:
        """The smoothed round-trip time to `peer`, if it was ever measured."""
        estimate = self._peers.get(peer)
        return None if estimate is None else estimate.smoothed

    def timeout(self, peer: str) -> float:
        """How long to wait for `peer` to answer a small call."""
        estimate = self._peers.get(peer)
        if estimate is not None:
            wait = estimate.timeout
        elif len(self._recent) >= ENOUGH:
            wait = UNKNOWN_MARGIN * max(self._recent)
        else:
            return self.ceiling
        return min(max(wait, self.floor), self.ceiling)
