"""Latency models for the simulated network: the one-way delay between two addresses.

Owns where simulated nodes sit and how long a message takes between them.
`constant` gives every link the same delay. `geo` places each address at a
uniformly random point on the Earth's surface, drawn from a hash of the seed and
the address (so a node keeps its place across restarts, and a run repeats), with
an access-link delay drawn from a log-normal distribution; a message takes the
great-circle distance at the speed of light in fibre, times a route inflation,
plus the access delays at both ends. With the defaults the median round trip
between two random nodes is about 150 ms, with a tail past 300 ms: the shape of
the King measurements that p2psim used. Pure: no I/O, no time.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

EARTH_RADIUS_KM = 6371.0
FIBRE_KM_PER_S = 200_000.0  # light in glass: about two thirds of c
ROUTE_INFLATION = 1.3  # real paths are longer than the great circle
ACCESS_MEDIAN_S = 0.002  # one end's access link, one way
ACCESS_SIGMA = 1.4  # log-normal spread of access delays: the long tail

LatencyModel = Callable[[str, str], float]


@dataclass(frozen=True)
class ConstantLatency:
    """Every link takes `one_way` seconds."""

    one_way: float

    def __call__(self, source: str, target: str) -> float:
        return self.one_way


@dataclass(frozen=True, slots=True)
class Place:
    latitude: float  # radians
    longitude: float
    access: float  # seconds, one way


class GeoLatency:
    """Nodes on a sphere with access links; see the module docstring."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._places: dict[str, Place] = {}

    def place(self, address: str) -> Place:
        place = self._places.get(address)
        if place is None:
            digest = hashlib.sha256(f"{self.seed}:{address}".encode()).digest()
            rng = random.Random(digest)
            latitude = math.asin(2 * rng.random() - 1)  # uniform over the surface
            longitude = 2 * math.pi * rng.random()
            access = ACCESS_MEDIAN_S * math.exp(ACCESS_SIGMA * rng.gauss(0.0, 1.0))
            place = self._places[address] = Place(latitude, longitude, access)
        return place

    def __call__(self, source: str, target: str) -> float:
        a, b = self.place(source), self.place(target)
        return great_circle_km(a, b) * ROUTE_INFLATION / FIBRE_KM_PER_S + a.access + b.access


def great_circle_km(a: Place, b: Place) -> float:
    """Haversine distance between two places."""
    half = math.sin((b.latitude - a.latitude) / 2) ** 2 + math.cos(a.latitude) * math.cos(b.latitude) * math.sin(
        (b.longitude - a.longitude) / 2
    ) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(half)))


MODELS = ("constant", "geo")


def make_model(name: str, one_way: float, seed: int) -> LatencyModel:
    """The model called `name`: `constant` at `one_way` seconds, or `geo`."""
    if name == "constant":
        return ConstantLatency(one_way)
    if name == "geo":
        return GeoLatency(seed)
    raise ValueError(f"unknown latency model {name}; choose from {', '.join(MODELS)}")


def round_trip_percentiles(model: LatencyModel, addresses: Sequence[str], rng: random.Random, pairs: int = 20_000) -> tuple[float, float]:
    """Median and 99th-percentile round trip between random distinct pairs of `addresses`."""
    if len(addresses) < 2:
        return 0.0, 0.0
    trips = []
    for _ in range(pairs):
        first, second = rng.sample(range(len(addresses)), 2)
        trips.append(model(addresses[first], addresses[second]) + model(addresses[second], addresses[first]))
    trips.sort()
    return statistics.median(trips), trips[min(len(trips) - 1, math.ceil(0.99 * len(trips)) - 1)]
