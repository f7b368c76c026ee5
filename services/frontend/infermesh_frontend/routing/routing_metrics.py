"""Prometheus metrics of a frontend's routing: replicas by health, requests per replica, failovers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from infermesh_frontend.routing.replica_table import ReplicaHealth


class RoutingMetrics:
    """Counters and gauges the scheduler pool keeps up to date."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            "infermesh_frontend_scheduler_replicas",
            "Scheduler replicas this frontend knows, by health (unknown = not polled yet).",
            ["health"],
            registry=registry,
        )
        self.routed = Counter(
            "infermesh_frontend_routed_requests",
            "Requests sent to each scheduler replica (a failover re-submission counts again).",
            ["replica"],
            registry=registry,
        )
        self.failovers = Counter(
            "infermesh_frontend_failovers",
            "In-flight requests moved to another replica: unavailable (the stream failed) or stalled "
            "(the replica stopped answering).",
            ["reason"],
            registry=registry,
        )
        for health in ReplicaHealth:
            self.replicas.labels(health=health.value).set(0)

    def set_replica_health(self, counts: dict[ReplicaHealth, int]) -> None:
        """Sets the replica gauge from a count per health."""
        for health in ReplicaHealth:
            self.replicas.labels(health=health.value).set(counts.get(health, 0))
