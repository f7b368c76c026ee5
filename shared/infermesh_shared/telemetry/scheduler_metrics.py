"""Scheduler state metrics: queue, batch, KV cache, prefix cache, preemption."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infermesh_shared.telemetry.request_metrics import TTFT_BUCKETS


class SchedulerMetrics:
    """Gauges of the scheduler's current state and counters of its events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_time = Histogram(
            "infermesh_queue_time_seconds",
            "Time a request waited from arrival until first scheduled (seconds).",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.requests_running = Gauge(
            "infermesh_requests_running", "Requests in the running batch.", registry=registry
        )
        self.requests_waiting = Gauge(
            "infermesh_requests_waiting",
            "Requests waiting to be scheduled (including preempted).",
            registry=registry,
        )
        self.kv_cache_usage = Gauge(
            "infermesh_kv_cache_usage_ratio",
            "Fraction of KV blocks held by sequences (0..1); cached-only blocks count as free.",
            registry=registry,
        )
        self.prefix_cache_queries = Counter(
            "infermesh_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache (tokens).",
            registry=registry,
        )
        self.prefix_cache_hits = Counter(
            "infermesh_prefix_cache_hits",
            "Prompt tokens found in the prefix cache (tokens).",
            registry=registry,
        )
        self.preemptions = Counter("infermesh_preemptions", "Sequences preempted.", registry=registry)
        self.engine_steps = Counter("infermesh_engine_steps", "Engine steps run.", registry=registry)
        self.step_batch_size = Histogram(
            "infermesh_step_batch_size",
            "Sequences per engine step.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
