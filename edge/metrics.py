"""An edge's counters, and `/metrics` in Prometheus text format.

Owns the names: requests by method, hits by tier, upstream fetches by tier,
collapsed waits, bytes served and origin bytes. Each edge has its own registry, so
several edges in one process (tests, the demo) keep separate counts.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created samples only add noise here

TIERS = ("memory", "disk", "peer", "parent", "dht", "origin")


class EdgeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, edge: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["edge"]
        self._requests = Counter("chordcdn_edge_requests", "Requests received, by method", [*labels, "method"], registry=self.registry)
        self._hits = Counter("chordcdn_edge_hits", "Requests answered from the edge's own tiers", [*labels, "tier"], registry=self.registry)
        self._upstream = Counter("chordcdn_edge_upstream_fetches", "Fetches from each upstream tier", [*labels, "tier"], registry=self.registry)
        collapsed = Counter("chordcdn_edge_collapsed", "Requests that waited on another request's fetch", labels, registry=self.registry)
        served = Counter("chordcdn_edge_served_bytes", "Body bytes sent to clients", labels, registry=self.registry)
        origin = Counter("chordcdn_edge_origin_bytes", "Body bytes received from the origin", labels, registry=self.registry)
        self.edge = edge
        self._hit_by_tier = {tier: self._hits.labels(edge, tier) for tier in TIERS}
        self._upstream_by_tier = {tier: self._upstream.labels(edge, tier) for tier in TIERS}
        self._by_method = {method: self._requests.labels(edge, method) for method in ("GET", "HEAD")}
        self._collapsed = collapsed.labels(edge)
        self._served = served.labels(edge)
        self._origin = origin.labels(edge)

    def request(self, method: str) -> None:
        counter = self._by_method.get(method)
        if counter is None:
            counter = self._by_method[method] = self._requests.labels(self.edge, method[:32])
        counter.inc()

    def hit(self, tier: str) -> None:
        self._hit_by_tier[tier].inc()

    def upstream(self, tier: str) -> None:
        self._upstream_by_tier[tier].inc()

    def collapsed(self) -> None:
        self._collapsed.inc()

    def served(self, size: int) -> None:
        self._served.inc(size)

    def origin_bytes(self, size: int) -> None:
        self._origin.inc(size)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (for tests and the demo)."""
        found = self.registry.get_sample_value(name, {"edge": self.edge, **labels})
        return found or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
