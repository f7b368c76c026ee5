"""Scheduler metrics: queue time and step histograms, and state read at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermesh_shared.telemetry.request_metrics import E2E_BUCKETS, TTFT_BUCKETS

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
    # Device KV blocks; 0 until the workers registered and the pool was sized.
    total_blocks: int = 0


@dataclass(slots=True, frozen=True)
class CacheConfig:
    """The KV-cache settings `infermesh_cache_config_info` reports (vLLM's cache_config_info)."""

    block_size: int
    cache_dtype: str
    enable_prefix_caching: bool
    enable_swap: bool


class _LoadCollector(Collector):
    """Asks `read_load` for fresh figures on every scrape, so the hot path updates nothing."""

    def __init__(
        self, read_load: Callable[[], SchedulerLoadFigures | None], cache_config: CacheConfig | None
    ) -> None:
        self._read_load = read_load
        self._cache_config = cache_config

    def describe(self) -> list[Metric]:
        return list(self._families(None, self._cache_config))

    def collect(self) -> Iterator[Metric]:
        try:
            figures = self._read_load()
        except Exception:  # noqa: BLE001 - a failed read must not break the rest of /metrics
            logger.warning("could not read the scheduler's load for /metrics", exc_info=True)
            figures = None
        yield from self._families(figures, self._cache_config)

    @staticmethod
    def _families(figures: SchedulerLoadFigures | None, cache: CacheConfig | None) -> Iterator[Metric]:
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
        cache_info = GaugeMetricFamily(
            "infermesh_cache_config_info",
            "KV-cache configuration as labels (value 1); num_blocks is 0 until the workers registered.",
            labels=["block_size", "num_blocks", "cache_dtype", "enable_prefix_caching", "enable_swap"],
        )
        if figures is not None:
            running.add_metric([], figures.requests_running)
            waiting.add_metric([], figures.requests_waiting)
            usage.add_metric([], figures.kv_cache_usage_ratio)
            queries.add_metric([], figures.prefix_cache_queries)
            hits.add_metric([], figures.prefix_cache_hits)
            preemptions.add_metric([], figures.preemptions)
        if cache is not None:
            num_blocks = figures.total_blocks if figures is not None else 0
            cache_info.add_metric(
                [
                    str(cache.block_size),
                    str(num_blocks),
                    cache.cache_dtype,
                    str(cache.enable_prefix_caching).lower(),
                    str(cache.enable_swap).lower(),
                ],
                1,
            )
        yield from (running, waiting, usage, queries, hits, preemptions, cache_info)


class SchedulerMetrics:
    """Queue-time and step histograms, plus the scheduler's state read by `read_load` per scrape.

    `read_load` runs on the metrics server's thread; it must hand back a consistent snapshot
    (the scheduler reads it on its event loop) or None before the scheduler exists.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        read_load: Callable[[], SchedulerLoadFigures | None],
        cache_config: CacheConfig | None = None,
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
        self.prefill_time = Histogram(
            "infermesh_request_prefill_time_seconds",
            "Time a finished request spent in prefill: first scheduled to first token (seconds).",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.decode_time = Histogram(
            "infermesh_request_decode_time_seconds",
            "Time a finished request spent decoding: first token to last token (seconds).",
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        # Live migrations this replica ran as their source (scheduler.proto Migrate).
        self.migrations = Counter(
            "infermesh_migrations",
            "Live migrations started here, by outcome (migrated, failed) and the reason of a failure.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.migration_downtime = Histogram(
            "infermesh_migration_downtime_seconds",
            "Pause of a migrated request: held at the source until adopted by the destination (seconds).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.migration_bytes = Counter(
            "infermesh_migration_bytes", "KV bytes copied by live migrations (bytes).", registry=registry
        )
        registry.register(_LoadCollector(read_load, cache_config))

    def request_phases_ended(
        self, scheduled_at: float | None, first_token_at: float | None, last_token_at: float | None
    ) -> None:
        """Records the prefill and decode time of a request that finished (monotonic seconds)."""
        if scheduled_at is None or first_token_at is None:
            return
        self.prefill_time.observe(first_token_at - scheduled_at)
        self.decode_time.observe((last_token_at or first_token_at) - first_token_at)
