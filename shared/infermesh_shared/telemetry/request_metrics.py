"""Per-request Prometheus metrics, shared by the frontend and the scheduler."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

# Latencies on CPU test models sit in milliseconds, on real models in seconds: cover both.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
E2E_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
    240.0,
    480.0,
)


def status_label(code: grpc.StatusCode) -> str:
    """The `status` label for a request that ended with `code`: `ok`, `resource_exhausted`, ..."""
    return code.name.lower()


class RequestMetrics:
    """Latency histograms and outcome counters of the requests a service handled."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.time_to_first_token = Histogram(
            "infermesh_time_to_first_token_seconds",
            "Time from request arrival to its first generated token (seconds).",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "infermesh_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request (seconds).",
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e_request_latency = Histogram(
            "infermesh_e2e_request_latency_seconds",
            "Time from request arrival to its last token (seconds), for requests that finished.",
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "infermesh_requests",
            "Requests that ended, by gRPC status (ok, invalid_argument, resource_exhausted, ...).",
            ["status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "infermesh_prompt_tokens", "Prompt tokens of finished requests (tokens).", registry=registry
        )
        self.generation_tokens = Counter(
            "infermesh_generation_tokens",
            "Generated tokens of finished requests (tokens).",
            registry=registry,
        )

    def request_ended(self, code: grpc.StatusCode) -> None:
        """Counts one request under its final status."""
        self.requests.labels(status=status_label(code)).inc()
