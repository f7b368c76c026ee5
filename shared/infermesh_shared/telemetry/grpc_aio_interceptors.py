"""Trace-context interceptors for grpc.aio servers and channels (scheduler and frontend)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from infermesh_shared.telemetry import grpc_propagation as prop
from infermesh_shared.telemetry.tracing import get_tracer, tracing_enabled

_TRACER_NAME = "infermesh.grpc.server"


class AioTracingServerInterceptor(grpc.aio.ServerInterceptor):
    """Runs each RPC inside a SERVER span that continues the caller's trace from its metadata.

    The span is current while the handler runs, so its spans (and the context its calls
    propagate) are children of the RPC. Streaming handlers may be async generators or
    coroutines that call `context.write`. Does nothing when tracing is off or for methods
    `policy` leaves out (health checks; polls outside a caller's trace).
    """

    def __init__(self, policy: prop.ServerTracePolicy = prop.DEFAULT_SERVER_POLICY) -> None:
        self._policy = policy

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if handler is None or not tracing_enabled() or not self._policy.traces(method, metadata):
            return handler
        name = prop.parse_rpc_name(method)
        wrap = functools.partial(_traced, name=name, metadata=metadata)
        return prop.rewrap_handler(handler, wrap, wrap)


def _context_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode | None:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return None


def _traced(behavior: Callable, name: prop.RpcName, metadata) -> Callable:
    if inspect.isasyncgenfunction(behavior):
        return _traced_async_gen(behavior, name, metadata)
    return _traced_coroutine(behavior, name, metadata)


def _traced_coroutine(behavior: Callable, name: prop.RpcName, metadata) -> Callable:
    async def run(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        span = prop.start_server_span(get_tracer(_TRACER_NAME), name, metadata)
        error: BaseException | None = None
        try:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                result = behavior(request_or_iterator, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            prop.finish_server_span(span, _context_code(context, error), error)

    return run


def _traced_async_gen(behavior: Callable, name: prop.RpcName, metadata) -> Callable:
    async def run(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        span = prop.start_server_span(get_tracer(_TRACER_NAME), name, metadata)
        span_context = trace.set_span_in_context(span)
        error: BaseException | None = None
        try:
            responses = behavior(request_or_iterator, context)
            while True:
                # Current only while the handler computes each message: no token is held across
                # a yield, so a generator closed from another task never detaches the wrong one.
                # Plain attach/detach: this runs once per streamed message.
                token = otel_context.attach(span_context)
                try:
                    message = await responses.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    otel_context.detach(token)
                yield message
        except GeneratorExit:
            await responses.aclose()
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            prop.finish_server_span(span, _context_code(context, error), error)

    return run


class _ClientTraceInjector:
    def _with_context(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if not tracing_enabled():
            return details
        metadata = details.metadata
        pairs = list(metadata) if metadata is not None else []
        injected = prop.inject_metadata(pairs)
        return details._replace(metadata=grpc.aio.Metadata(*injected))


class AioTracingUnaryUnaryInterceptor(_ClientTraceInjector, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._with_context(client_call_details), request)


class AioTracingUnaryStreamInterceptor(_ClientTraceInjector, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._with_context(client_call_details), request)


class AioTracingStreamUnaryInterceptor(_ClientTraceInjector, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._with_context(client_call_details), request_iterator)


class AioTracingStreamStreamInterceptor(_ClientTraceInjector, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._with_context(client_call_details), request_iterator)


def aio_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Pass as `grpc.aio.server(interceptors=aio_server_interceptors())` after init_tracing.

    Empty when tracing is off, so an untraced server's calls take grpc's direct path.
    """
    return [AioTracingServerInterceptor()] if tracing_enabled() else []


def aio_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Pass as `grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors())`.

    Call after init_tracing: empty when tracing is off, because grpc.aio routes every call on
    an intercepted channel through extra tasks. grpc.aio needs one interceptor object per call
    type; each adds the current span's traceparent to the call's metadata (no client span).
    """
    if not tracing_enabled():
        return []
    return [
        AioTracingUnaryUnaryInterceptor(),
        AioTracingUnaryStreamInterceptor(),
        AioTracingStreamUnaryInterceptor(),
        AioTracingStreamStreamInterceptor(),
    ]
