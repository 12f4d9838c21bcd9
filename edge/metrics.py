"""An edge's counters, and `/metrics` in Prometheus text format.

Owns the names: requests by method (unknown methods counted as "other"), hits by
tier, upstream fetches by tier, cache events (revalidations, stale answers,
requests passed through, invalidations, purges), collapsed waits, bytes served and origin bytes. Counting is a plain integer add
on the hot path; prometheus_client renders the counts (through a custom
collector) only when /metrics is read. Each edge has its own registry, so several
edges in one process (tests, the demo) keep separate counts.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

TIERS = ("memory", "disk", "peer", "parent", "dht", "origin")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE"})
# What the cache did beyond a plain hit or fetch.
EVENTS = ("revalidated", "stale-while-revalidate", "stale-if-error", "passed", "invalidated", "purged", "leaf-from-origin", "truncated", "post-stored")


class EdgeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, edge: str) -> None:
        self.edge = edge
        self.requests: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.upstream_fetches: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.collapsed_waits = 0
        self.served_bytes = 0
        self.origin_body_bytes = 0
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]

    def request(self, method: str) -> None:
        self.requests[method if method in METHODS else "other"] += 1

    def hit(self, tier: str) -> None:
        self.hits[tier] += 1

    def upstream(self, tier: str) -> None:
        self.upstream_fetches[tier] += 1

    def event(self, name: str, count: int = 1) -> None:
        self.events[name] += count

    def collapsed(self) -> None:
        self.collapsed_waits += 1

    def served(self, size: int) -> None:
        self.served_bytes += size

    def origin_bytes(self, size: int) -> None:
        self.origin_body_bytes += size

    def collect(self) -> Iterator[Metric]:
        yield self._family("chordcdn_edge_requests", "Requests received, by method", "method", self.requests)
        yield self._family("chordcdn_edge_hits", "Requests answered from the edge's own tiers", "tier", self.hits, ("memory", "disk"))
        yield self._family("chordcdn_edge_upstream_fetches", "Fetches from each upstream tier", "tier", self.upstream_fetches, TIERS[2:])
        yield self._family("chordcdn_edge_cache_events", "Revalidations, stale answers, passed requests, invalidations, purges, leaves the ring lost taken from the origin, and bodies cut short", "event", self.events, EVENTS)
        for name, text, value in (
            ("chordcdn_edge_collapsed", "Requests that waited on another request's fetch", self.collapsed_waits),
            ("chordcdn_edge_served_bytes", "Body bytes sent to clients", self.served_bytes),
            ("chordcdn_edge_origin_bytes", "Body bytes received from the origin", self.origin_body_bytes),
        ):
            family = CounterMetricFamily(name, text, labels=["edge"])
            family.add_metric([self.edge], value)
            yield family

    def _family(self, name: str, text: str, label: str, counts: Counter[str], always: tuple[str, ...] = ()) -> CounterMetricFamily:
        family = CounterMetricFamily(name, text, labels=["edge", label])
        for key in sorted({*always, *counts}):
            family.add_metric([self.edge, key], counts[key])
        return family

    def render(self) -> bytes:
        return generate_latest(self.registry)
