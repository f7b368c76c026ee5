"""Scheduler metrics: queue time and step histograms, and state read at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermesh_shared.telemetry.request_metrics import TTFT_BUCKETS

logger = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class SchedulerLoadFigures:
    """The scheduler's state at one moment, as the metrics endpoint reports it."""

    requests_running: int
    requests_waiting: int
    # Fraction of KV blocks held by sequences (0..1); blocks only the prefix cache holds count as free.
    kv_cache_usage_ratio: float
    # Cumulative since start (tokens).
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int


class _LoadCollector(Collector):
    """Asks `read_load` for fresh figures on every scrape, so the hot path updates nothing."""

    def __init__(self, read_load: Callable[[], SchedulerLoadFigures | None]) -> None:
        self._read_load = read_load

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        try:
            figures = self._read_load()
        except Exception:  # noqa: BLE001 - a failed read must not break the rest of /metrics
            logger.warning("could not read the scheduler's load for /metrics", exc_info=True)
            figures = None
        yield from self._families(figures)

    @staticmethod
    def _families(figures: SchedulerLoadFigures | None) -> Iterator[Metric]:
        running = GaugeMetricFamily("infermesh_requests_running", "Requests in the running batch.")
        waiting = GaugeMetricFamily(
            "infermesh_requests_waiting", "Requests waiting to be scheduled for the first time."
        )
        usage = GaugeMetricFamily(
            "infermesh_kv_cache_usage_ratio",
            "Fraction of KV blocks held by sequences (0..1); cached-only blocks count as free.",
        )
        queries = CounterMetricFamily(
            "infermesh_prefix_cache_queries", "Prompt tokens looked up in the prefix cache (tokens)."
        )
        hits = CounterMetricFamily(
            "infermesh_prefix_cache_hits", "Prompt tokens found in the prefix cache (tokens)."
        )
        preemptions = CounterMetricFamily("infermesh_preemptions", "Sequences preempted.")
        if figures is not None:
            running.add_metric([], figures.requests_running)
            waiting.add_metric([], figures.requests_waiting)
            usage.add_metric([], figures.kv_cache_usage_ratio)
            queries.add_metric([], figures.prefix_cache_queries)
            hits.add_metric([], figures.prefix_cache_hits)
            preemptions.add_metric([], figures.preemptions)
        yield from (running, waiting, usage, queries, hits, preemptions)


class SchedulerMetrics:
    """Queue-time and step histograms, plus the scheduler's state read by `read_load` per scrape.

    `read_load` runs on the metrics server's thread; it must hand back a consistent snapshot
    (the scheduler reads it on its event loop) or None before the scheduler exists.
    """

    def __init__(
        self, registry: CollectorRegistry, read_load: Callable[[], SchedulerLoadFigures | None]
    ) -> None:
        self.queue_time = Histogram(
            "infermesh_queue_time_seconds",
            "Time a request waited from arrival until first scheduled (seconds).",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.engine_steps = Counter("infermesh_engine_steps", "Engine steps run.", registry=registry)
        self.step_batch_size = Histogram(
            "infermesh_step_batch_size",
            "Sequences per engine step.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        self.step_seconds = Histogram(
            "infermesh_step_seconds",
            "Time of one engine step as the scheduler sees it: plan sent to tokens back (seconds).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        registry.register(_LoadCollector(read_load))
