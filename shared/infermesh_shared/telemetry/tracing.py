"""Process-wide OpenTelemetry tracing: one TracerProvider per service process, or none at all.

Hot paths call `tracing_enabled()` first and skip every span and attribute dict when it is
False, so a service with `tracing_exporter: none` pays one attribute read per step.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import socket
import sys
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

logger = logging.getLogger(__name__)

# Spans reach the collector within this delay; short enough for tests to wait on, long
# enough that export batches stay large under load.
_EXPORT_DELAY_MS = 500


class TracingExporter(str, enum.Enum):
    """Where spans go: the `tracing_exporter` config option."""

    NONE = "none"
    CONSOLE = "console"
    OTLP_GRPC = "otlp_grpc"
    OTLP_HTTP = "otlp_http"


@dataclass(slots=True)
class _TracingState:
    # Process-wide because OpenTelemetry's current-span context is process-wide too.
    enabled: bool = False
    provider: TracerProvider | None = None
    global_provider_set: bool = False
    atexit_registered: bool = False


_state = _TracingState()
_NOOP_TRACER = trace.NoOpTracer()


def init_tracing(
    service_name: str,
    exporter: str | TracingExporter = TracingExporter.NONE,
    endpoint: str = "",
    sample_ratio: float = 1.0,
) -> None:
    """Sets up this process's tracer provider; `exporter="none"` turns tracing off.

    `endpoint` is the OTLP collector: `host:port` or `http://host:port` for otlp_grpc (plain
    text unless the scheme is https), `http://host:port[/v1/traces]` for otlp_http; empty means
    the exporter's default (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost). New traces are kept
    with probability `sample_ratio`; a span whose parent came with a sampling decision follows
    that decision. Calling it again replaces the previous provider (after flushing it).
    Raises ValueError for an unknown exporter or a ratio outside [0, 1].
    """
    kind = _parse_exporter(exporter)
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"tracing sample ratio must be within [0, 1], got {sample_ratio}")
    shutdown_tracing()
    if kind is TracingExporter.NONE:
        return
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.namespace": "infermesh",
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(
        BatchSpanProcessor(_make_exporter(kind, endpoint), schedule_delay_millis=_EXPORT_DELAY_MS)
    )
    _state.provider = provider
    _state.enabled = True
    if not _state.global_provider_set:
        # Only once per process (the API refuses a second time); infermesh code asks get_tracer().
        trace.set_tracer_provider(provider)
        _state.global_provider_set = True
    if not _state.atexit_registered:
        atexit.register(shutdown_tracing)
        _state.atexit_registered = True
    logger.info(
        "tracing on: exporter=%s endpoint=%s sample_ratio=%s",
        kind.value,
        endpoint or "(default)",
        sample_ratio,
    )


def tracing_enabled() -> bool:
    """True when spans are being produced; hot paths skip all tracing work when False."""
    return _state.enabled


def get_tracer(name: str) -> trace.Tracer:
    """A tracer of this process's provider, or a no-op tracer when tracing is off."""
    provider = _state.provider
    if provider is None:
        return _NOOP_TRACER
    return provider.get_tracer(name)


def flush_tracing(timeout_ms: int = 5000) -> bool:
    """Exports every finished span now; False when the exporter did not finish in time."""
    provider = _state.provider
    if provider is None:
        return True
    return provider.force_flush(timeout_ms)


def shutdown_tracing() -> None:
    """Flushes and stops the provider; call on service exit (also registered with atexit)."""
    provider = _state.provider
    _state.enabled = False
    _state.provider = None
    if provider is not None:
        provider.force_flush(5000)
        provider.shutdown()


def _parse_exporter(exporter: str | TracingExporter) -> TracingExporter:
    try:
        return TracingExporter(exporter)
    except ValueError:
        allowed = ", ".join(e.value for e in TracingExporter)
        raise ValueError(f"unknown tracing exporter {exporter!r}; use one of: {allowed}") from None


def _make_exporter(kind: TracingExporter, endpoint: str) -> SpanExporter:
    if kind is TracingExporter.CONSOLE:
        # stderr, beside the logs: stdout carries the services' "listening on" lines.
        return ConsoleSpanExporter(out=sys.stderr)
    if kind is TracingExporter.OTLP_GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        if not endpoint:
            return GrpcExporter()
        insecure = not endpoint.startswith("https://")
        return GrpcExporter(endpoint=endpoint, insecure=insecure)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if not endpoint:
        return HttpExporter()
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    if not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint)
