"""W3C trace context in gRPC metadata: what the client and server interceptors share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from infermesh_shared.telemetry import semconv

PROPAGATOR = TraceContextTextMapPropagator()
TRACE_METADATA_KEYS = frozenset(PROPAGATOR.fields)  # traceparent, tracestate


# Server-side codes that mean the server failed (OpenTelemetry gRPC conventions); others,
# such as INVALID_ARGUMENT, are the caller's mistake and leave the server span unset.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(slots=True, frozen=True)
class RpcName:
    """`/pkg.Service/Method` split the way RPC semantic conventions name spans."""

    full_method: str
    service: str
    method: str

    @property
    def span_name(self) -> str:
        return f"{self.service}/{self.method}"


def parse_rpc_name(full_method: str) -> RpcName:
    """Splits a gRPC method path such as `/infermesh.v1.SchedulerService/Submit`."""
    service, _, method = full_method.lstrip("/").partition("/")
    return RpcName(full_method, service, method)


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The remote parent carried by incoming metadata (an empty context when there is none)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in TRACE_METADATA_KEYS:
            carrier[key] = value.decode() if isinstance(value, bytes) else value
    return PROPAGATOR.extract(carrier)


def extract_context_from_headers(headers: Mapping[str, str]) -> otel_context.Context:
    """The remote parent carried by HTTP headers (case-insensitive names)."""
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in TRACE_METADATA_KEYS}
    return PROPAGATOR.extract(carrier)


def inject_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, str | bytes]]:
    """`metadata` plus the current span's traceparent/tracestate (replacing any already there)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    kept = (
        [(k, v) for k, v in (metadata or ()) if k not in TRACE_METADATA_KEYS]
        if carrier
        else list(metadata or ())
    )
    return kept + list(carrier.items())


def current_trace_metadata() -> list[tuple[str, str]]:
    """traceparent/tracestate of the current span, for calls made without the interceptor."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return list(carrier.items())


def server_span_attributes(name: RpcName) -> dict[str, str]:
    return {semconv.RPC_SYSTEM: "grpc", semconv.RPC_SERVICE: name.service, semconv.RPC_METHOD: name.method}


def finish_server_span(span: Span, code: grpc.StatusCode | None, error: BaseException | None) -> None:
    """Records the RPC's final status on its server span and ends it."""
    if code is None:
        code = grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK
    span.set_attribute(semconv.RPC_GRPC_STATUS_CODE, code.value[0])
    if error is not None and code is grpc.StatusCode.UNKNOWN:
        span.record_exception(error)
    if code in _SERVER_ERROR_CODES:
        span.set_status(StatusCode.ERROR, code.name)
    span.end()


@dataclass(slots=True, frozen=True)
class ServerTracePolicy:
    """Which incoming RPCs get a server span."""

    # Never traced: health checks and reflection.
    excluded_prefixes: tuple[str, ...] = ("/grpc.health.v1.", "/grpc.reflection.")
    # Traced only inside a caller's trace: frontends poll GetLoad/GetModelInfo, and a trace per poll
    # is noise; a worker's Execute/Reset follow the scheduler's step (traced only when a sampled
    # request is in it), so a worker never starts a trace of its own.
    parent_required: tuple[str, ...] = (
        "/infermesh.v1.SchedulerService/GetLoad",
        "/infermesh.v1.SchedulerService/GetModelInfo",
        "/infermesh.v1.WorkerService/Execute",
        "/infermesh.v1.WorkerService/Reset",
    )

    def traces(self, full_method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        if full_method.startswith(self.excluded_prefixes):
            return False
        if full_method in self.parent_required:
            return any(key == "traceparent" for key, _ in metadata or ())
        return True


DEFAULT_SERVER_POLICY = ServerTracePolicy()


def start_server_span(tracer: trace.Tracer, name: RpcName, metadata) -> Span:
    """A SERVER span for the RPC, child of the caller's context from `metadata`."""
    parent = extract_context(metadata)
    return tracer.start_span(
        name.span_name, context=parent, kind=trace.SpanKind.SERVER, attributes=server_span_attributes(name)
    )


def rewrap_handler(handler: grpc.RpcMethodHandler, wrap_unary_out: Callable, wrap_stream_out: Callable):
    """The same method handler with its behaviour wrapped: `wrap_unary_out` for RPCs that answer
    once, `wrap_stream_out` for RPCs that stream their answer. Sync and aio servers share it."""
    serializers = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary_out(handler.unary_unary), *serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary_out(handler.stream_unary), *serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream_out(handler.unary_stream), *serializers)
    return grpc.stream_stream_rpc_method_handler(wrap_stream_out(handler.stream_stream), *serializers)
