"""Per-request timing (TTFT, inter-token latency, end-to-end) fed into the Prometheus metrics and,
when OTLP export is on, the OpenTelemetry GenAI server metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from infermesh.v1 import common_pb2
from infermesh_shared.telemetry import semconv as sc
from infermesh_shared.telemetry.genai_metrics import genai_metrics
from infermesh_shared.telemetry.request_metrics import RequestMetrics


class GenerationTimer:
    """Watches one request's deltas and records its latencies; does nothing without metrics."""

    def __init__(
        self,
        metrics: RequestMetrics | None,
        operation: str = sc.OPERATION_TEXT_COMPLETION,
        model_name: Callable[[], str] = lambda: "",
    ) -> None:
        self._metrics = metrics
        self._genai = genai_metrics()
        self._operation = operation
        self._model_name = model_name
        self._start = time.monotonic()
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None

    def tokens_arrived(self, count: int) -> None:
        """Records the arrival of `count` new tokens (of any completion)."""
        if count == 0:
            return
        now = time.monotonic()
        if self._first_token_at is None:
            self._first_token_at = now
        if self._metrics is None:
            return
        if self._last_token_at is None:
            self._metrics.time_to_first_token.observe(now - self._start)
        else:
            # Tokens that arrive together share the gap since the previous arrival.
            gap = (now - self._last_token_at) / count
            for _ in range(count):
                self._metrics.inter_token_latency.observe(gap)
        self._last_token_at = now

    def finished(self, usage: common_pb2.Usage, finish_reason: int) -> None:
        """Records a request that ended normally; `finish_reason` is its first completion's."""
        self._genai_done(usage.completion_tokens, "")
        if self._metrics is None:
            return
        reason = common_pb2.FinishReason.Name(finish_reason).removeprefix("FINISH_REASON_").lower()
        self._metrics.request_finished(
            usage.prompt_tokens, usage.completion_tokens, reason, time.monotonic() - self._start
        )

    def failed(self, code: grpc.StatusCode) -> None:
        """Records a request that ended with an error status (or was cancelled)."""
        self._genai_done(0, code.name.lower())
        if self._metrics is not None:
            self._metrics.request_ended(code)

    def _genai_done(self, output_tokens: int, error_type: str) -> None:
        if self._genai is None:
            return
        ttft = None if self._first_token_at is None else self._first_token_at - self._start
        self._genai.request_done(
            self._model_name(),
            self._operation,
            time.monotonic() - self._start,
            ttft,
            output_tokens,
            error_type,
        )
