"""Worker metrics: how long each step plan takes to execute."""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram

from infermesh_shared.telemetry.service_registry import ServiceRegistry

STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """Step latency and token throughput of one worker rank."""

    def __init__(self, registry: ServiceRegistry) -> None:
        self._registry = registry
        self.step_seconds = Histogram(
            "infermesh_worker_step_seconds",
            "Time to execute one step plan on this worker, request in to response out (seconds).",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.step_tokens = Counter(
            "infermesh_worker_step_tokens", "Tokens computed in executed steps (tokens).", registry=registry
        )

    def model_loaded(self, model_path: str) -> None:
        """Labels this worker's series with the model it now serves (named like the scheduler names it)."""
        self._registry.model_name = os.path.basename(os.path.normpath(model_path))
