"""Consistent hashing of request keys (URL path + query) onto edge names.

Owns the ring: each edge contributes `vnodes` virtual points, the 64-bit xxHash of
the UTF-8 bytes of f"{name}#{i}"; a key belongs to the first point at or clockwise
after its own hash. Also owns the failover order (`preference`) and the bounded-loads
variant of Mirrokni, Thorup and Zadimoghaddam (`owner_bounded`).
Pure: no I/O, no time, no randomness; the caller supplies loads.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from fractions import Fraction
from functools import lru_cache

from xxhash import xxh64_intdigest

DEFAULT_VNODES = 128


class HashRingError(ValueError):
    """A ring was misused: bad vnode count, bad or duplicate name, unknown edge, empty ring."""


class HashRing:
    """Edge names placed on a 64-bit circle, `vnodes` points per edge."""

    def __init__(self, names: Iterable[str] = (), vnodes: int = DEFAULT_VNODES) -> None:
        if not isinstance(vnodes, int) or isinstance(vnodes, bool) or vnodes < 1:
            raise HashRingError(f"vnodes must be an integer >= 1, got {vnodes!r}")
        self._vnodes = vnodes
        self._points_of: dict[str, list[int]] = {}
        self._points: list[int] = []
        self._walk: list[str] = []  # owner of each point, the list written out twice
        for name in names:
            self._place(name)
        self._rebuild()

    @property
    def names(self) -> tuple[str, ...]:
        """The edges on the ring, sorted."""
        return tuple(sorted(self._points_of))

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def __len__(self) -> int:
        return len(self._points_of)

    def __contains__(self, name: object) -> bool:
        return name in self._points_of

    def add(self, name: str) -> None:
        """Put a new edge on the ring."""
        self._place(name)
        self._rebuild()

    def remove(self, name: str) -> None:
        """Take an edge off the ring; only the keys it owned change owner."""
        if name not in self._points_of:
            raise HashRingError(f"edge {name!r} is not on the ring")
        del self._points_of[name]
        self._rebuild()

    def owner(self, key: str) -> str:
        """The edge owning `key`."""
        return self._walk[self._start(key)]

    def preference(self, key: str) -> list[str]:
        """Every edge once, in ring order from the owner of `key`: the failover order."""
        wanted = len(self._points_of)
        start = self._start(key)
        walk = self._walk
        order: list[str] = []
        seen: set[str] = set()
        for i in range(start, start + len(self._points)):
            name = walk[i]
            if name not in seen:
                seen.add(name)
                order.append(name)
                if len(order) == wanted:
                    break
        return order

    def owner_bounded(self, key: str, loads: Mapping[str, int], epsilon: float = 0.25) -> str:
        """The first edge in preference order whose load is below the bounded-loads cap.

        The cap is ceil((1 + epsilon) * (total_load + 1) / n), total_load summed over
        the edges on the ring (names absent from `loads` count as 0, names not on the
        ring are ignored). With epsilon >= 0 and loads >= 0 some edge is always
        below the cap, since n edges all at the cap would hold more than the total.
        """
        if not math.isfinite(epsilon) or epsilon < 0:
            raise HashRingError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        order = self.preference(key)
        current = {name: loads.get(name, 0) for name in order}
        negative = sorted(name for name, load in current.items() if load < 0)
        if negative:
            raise HashRingError(f"loads must be >= 0; negative for {negative}")
        cap = load_cap(sum(current.values()), len(order), epsilon)
        for name in order:
            if current[name] < cap:
                return name
        raise AssertionError(f"bounded loads: every edge at or above cap {cap}")

    def _start(self, key: str) -> int:
        if not self._points:
            raise HashRingError("the ring has no edges")
        index = bisect_left(self._points, xxh64_intdigest(key.encode()))
        return index if index < len(self._points) else 0

    def _place(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise HashRingError(f"edge name must be a non-empty string, got {name!r}")
        if name in self._points_of:
            raise HashRingError(f"edge {name!r} is already on the ring")
        self._points_of[name] = [point_of(f"{name}#{i}") for i in range(self._vnodes)]

    def _rebuild(self) -> None:
        # Ties on a point (astronomically rare) go to the smaller name, so the ring
        # does not depend on the order edges were added.
        placed = sorted((p, name) for name, points in self._points_of.items() for p in points)
        self._points = [p for p, _ in placed]
        owners = [name for _, name in placed]
        self._walk = owners + owners


def point_of(text: str) -> int:
    """Where `text` lands on the 64-bit circle: xxh64 of its UTF-8 bytes."""
    return xxh64_intdigest(text.encode())


def load_cap(total_load: int, edges: int, epsilon: float) -> int:
    """ceil((1 + epsilon) * (total_load + 1) / edges), exact for decimal epsilons like 0.1."""
    top, bottom = _as_ratio(epsilon)
    return -(-(bottom + top) * (total_load + 1) // (bottom * edges))


@lru_cache(maxsize=32)
def _as_ratio(epsilon: float) -> tuple[int, int]:
    """epsilon as numerator and denominator, so 0.1 is 1/10 rather than its float."""
    ratio = Fraction(epsilon).limit_denominator(1_000_000)
    return ratio.numerator, ratio.denominator
