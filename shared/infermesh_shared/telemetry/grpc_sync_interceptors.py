"""Trace-context interceptors for synchronous grpc servers and channels (the worker's side)."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from infermesh_shared.telemetry import grpc_propagation as prop
from infermesh_shared.telemetry.tracing import get_tracer, tracing_enabled

_TRACER_NAME = "infermesh.grpc.server"


class TracingServerInterceptor(grpc.ServerInterceptor):
    """Runs each RPC inside a SERVER span that continues the caller's trace from its metadata.

    While the handler runs (and while a streaming handler produces each message) that span is
    the current span, so spans the handler starts are its children. Does nothing when tracing
    is off or for methods `policy` leaves out (health checks; polls outside a caller's trace).
    """

    def __init__(self, policy: prop.ServerTracePolicy = prop.DEFAULT_SERVER_POLICY) -> None:
        self._policy = policy

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler is None or not tracing_enabled() or not self._policy.traces(method, metadata):
            return handler
        name = prop.parse_rpc_name(method)
        return prop.rewrap_handler(
            handler,
            functools.partial(_traced_unary, name=name, metadata=metadata),
            functools.partial(_traced_stream, name=name, metadata=metadata),
        )


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else None


def _traced_unary(behavior: Callable, name: prop.RpcName, metadata) -> Callable:
    def run(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        span = prop.start_server_span(get_tracer(_TRACER_NAME), name, metadata)
        error: BaseException | None = None
        try:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                return behavior(request_or_iterator, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            prop.finish_server_span(span, _context_code(context), error)

    return run


def _traced_stream(behavior: Callable, name: prop.RpcName, metadata) -> Callable:
    def run(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        span = prop.start_server_span(get_tracer(_TRACER_NAME), name, metadata)
        error: BaseException | None = None
        try:
            span_context = trace.set_span_in_context(span)
            token = otel_context.attach(span_context)
            try:
                responses = iter(behavior(request_or_iterator, context))
            finally:
                otel_context.detach(token)
            while True:
                # Current only while the handler computes each message, not while grpc sends it.
                token = otel_context.attach(span_context)
                try:
                    message = next(responses)
                except StopIteration:
                    return
                finally:
                    otel_context.detach(token)
                yield message
        except GeneratorExit:
            error = None  # the client went away; grpc sets CANCELLED
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            prop.finish_server_span(span, _context_code(context), error)

    return run


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class TracingClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the current span's traceparent to every outgoing call's metadata (no client span)."""

    def _with_context(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if not tracing_enabled():
            return details
        return _CallDetails(
            details.method,
            details.timeout,
            prop.inject_metadata(details.metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_context(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_context(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_context(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_context(client_call_details), request_iterator)


def sync_server_interceptors() -> list[grpc.ServerInterceptor]:
    """Pass as `grpc.server(executor, interceptors=sync_server_interceptors())` after init_tracing.

    Empty when tracing is off, so an untraced server's calls take grpc's direct path.
    """
    return [TracingServerInterceptor()] if tracing_enabled() else []


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel` with trace-context propagation on every call; `channel` itself when tracing is off.

    Call after init_tracing.
    """
    if not tracing_enabled():
        return channel
    return grpc.intercept_channel(channel, TracingClientInterceptor())
