"""OpenTelemetry GenAI server metrics, exported over OTLP next to the traces.

`gen_ai.server.time_to_first_token`, `gen_ai.server.time_per_output_token` and
`gen_ai.server.request.duration` (semantic conventions for GenAI metrics) for backends that read
OTel metrics rather than scrape Prometheus. On when the service exports traces over OTLP
(`tracing_exporter: otlp_grpc|otlp_http`): the same collector gets both. The frontend records
them, once per request as the client sees it; the scheduler does not, so nothing is counted twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from infermesh_shared.telemetry import semconv as sc

TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
REQUEST_DURATION = "gen_ai.server.request.duration"
ERROR_TYPE = "error.type"
# The semantic conventions' advised bucket boundaries (seconds).
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# OTEL_METRIC_EXPORT_INTERVAL (ms) overrides, as the SDK documents.
_DEFAULT_EXPORT_INTERVAL_MS = 10_000


@dataclass(slots=True)
class GenAiServerMetrics:
    """The three GenAI server histograms of one process."""

    provider: MeterProvider
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    request_duration: Histogram

    def request_done(
        self,
        model: str,
        operation: str,
        duration_s: float,
        ttft_s: float | None,
        output_tokens: int,
        error_type: str = "",
    ) -> None:
        """Records one request; `error_type` (a status name) for one that failed."""
        attributes = {
            sc.GEN_AI_OPERATION_NAME: operation,
            sc.GEN_AI_PROVIDER_NAME: sc.PROVIDER_INFERMESH,
            sc.GEN_AI_REQUEST_MODEL: model,
            sc.GEN_AI_RESPONSE_MODEL: model,
        }
        if error_type:
            attributes[ERROR_TYPE] = error_type
        self.request_duration.record(duration_s, attributes)
        if ttft_s is not None:
            self.time_to_first_token.record(ttft_s, attributes)
            if output_tokens > 1:
                self.time_per_output_token.record((duration_s - ttft_s) / (output_tokens - 1), attributes)

    def shutdown(self) -> None:
        """Exports what is left and stops the export thread."""
        self.provider.shutdown()


_current: list[GenAiServerMetrics] = []


def genai_metrics() -> GenAiServerMetrics | None:
    """This process's GenAI metrics (process-wide, like its tracer provider), or None when off."""
    return _current[0] if _current else None


def stop_genai_metrics() -> None:
    """Exports the last figures; call on exit."""
    while _current:
        _current.pop().shutdown()


def start_genai_metrics(service_name: str, exporter: str, endpoint: str) -> GenAiServerMetrics | None:
    """Starts this process's GenAI metrics when `exporter` is an OTLP one (else None, and off)."""
    stop_genai_metrics()
    if exporter not in ("otlp_grpc", "otlp_http"):
        return None
    interval_ms = int(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", _DEFAULT_EXPORT_INTERVAL_MS))
    reader = PeriodicExportingMetricReader(_exporter(exporter, endpoint), export_interval_millis=interval_ms)
    views = [
        View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(buckets))
        for name, buckets in (
            (TIME_TO_FIRST_TOKEN, _TTFT_BUCKETS),
            (TIME_PER_OUTPUT_TOKEN, _TPOT_BUCKETS),
            (REQUEST_DURATION, _DURATION_BUCKETS),
        )
    ]
    resource = Resource.create({"service.name": service_name, "service.namespace": "infermesh"})
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    meter = provider.get_meter("infermesh.genai")
    metrics = GenAiServerMetrics(
        provider,
        meter.create_histogram(
            TIME_TO_FIRST_TOKEN, unit="s", description="Time to generate the first token."
        ),
        meter.create_histogram(
            TIME_PER_OUTPUT_TOKEN, unit="s", description="Time per output token after the first."
        ),
        meter.create_histogram(
            REQUEST_DURATION, unit="s", description="Generative AI server request duration."
        ),
    )
    _current.append(metrics)
    return metrics


def _exporter(kind: str, endpoint: str) -> MetricExporter:
    if kind == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        if not endpoint:
            return GrpcExporter()
        return GrpcExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    if not endpoint:
        return HttpExporter()
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/v1/traces"):
        endpoint = endpoint[: -len("/v1/traces")]
    return HttpExporter(endpoint=endpoint + "/v1/metrics")
