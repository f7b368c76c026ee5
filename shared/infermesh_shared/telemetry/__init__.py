"""Tracing, metrics and logs for every infermesh service.

Startup order in a service: configure_logging, init_tracing, then build gRPC servers and
channels with the interceptor factories (they return nothing when tracing is off), then
start_metrics_server. Call shutdown_tracing on exit so the last spans are exported.
"""

from infermesh_shared.telemetry.grpc_aio_interceptors import (
    AioTracingServerInterceptor,
    aio_client_interceptors,
    aio_server_interceptors,
)
from infermesh_shared.telemetry.grpc_propagation import (
    current_trace_metadata,
    extract_context,
    extract_context_from_headers,
)
from infermesh_shared.telemetry.grpc_sync_interceptors import (
    TracingClientInterceptor,
    TracingServerInterceptor,
    sync_server_interceptors,
    traced_channel,
)
from infermesh_shared.telemetry.metrics_server import MetricsServer, create_registry, start_metrics_server
from infermesh_shared.telemetry.request_metrics import RequestMetrics, status_label
from infermesh_shared.telemetry.scheduler_metrics import CacheConfig, SchedulerLoadFigures, SchedulerMetrics
from infermesh_shared.telemetry.step_spans import activate_span, start_step_span
from infermesh_shared.telemetry.structured_logging import (
    TRACE,
    configure_logging,
    configure_service_logging,
    parse_log_level,
)
from infermesh_shared.telemetry.tracing import (
    TracingExporter,
    flush_tracing,
    get_tracer,
    init_tracing,
    shutdown_tracing,
    tracing_enabled,
)
from infermesh_shared.telemetry.worker_metrics import WorkerMetrics

__all__ = [
    "TRACE",
    "AioTracingServerInterceptor",
    "MetricsServer",
    "RequestMetrics",
    "CacheConfig",
    "SchedulerLoadFigures",
    "SchedulerMetrics",
    "TracingClientInterceptor",
    "TracingExporter",
    "TracingServerInterceptor",
    "WorkerMetrics",
    "activate_span",
    "aio_client_interceptors",
    "aio_server_interceptors",
    "configure_logging",
    "configure_service_logging",
    "create_registry",
    "current_trace_metadata",
    "extract_context",
    "extract_context_from_headers",
    "flush_tracing",
    "get_tracer",
    "init_tracing",
    "parse_log_level",
    "shutdown_tracing",
    "start_metrics_server",
    "start_step_span",
    "status_label",
    "sync_server_interceptors",
    "traced_channel",
    "tracing_enabled",
]
