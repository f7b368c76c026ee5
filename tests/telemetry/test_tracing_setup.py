"""init_tracing's exporters, sampling and the off switch; the engine-step span's placement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import pytest
from infermesh_shared.telemetry import (
    AioTracingServerInterceptor,
    aio_client_interceptors,
    aio_server_interceptors,
    flush_tracing,
    get_tracer,
    init_tracing,
    shutdown_tracing,
    start_step_span,
    sync_server_interceptors,
    traced_channel,
    tracing_enabled,
)
from infermesh_shared.telemetry import semconv as sc
from infermesh_shared.telemetry.grpc_propagation import ServerTracePolicy
from opentelemetry import trace
from opentelemetry.trace import SpanContext, TraceFlags

from tests.telemetry.otlp_collector import OtlpCollector


@pytest.fixture(autouse=True)
def tracing_off_afterwards() -> Iterator[None]:
    yield
    shutdown_tracing()


async def _serve_and_call(metadata: tuple[tuple[str, str], ...]) -> SpanContext:
    """Starts an aio server built the way services build theirs; returns what its handler saw."""
    seen: list[SpanContext] = []
    server = grpc.aio.server(interceptors=aio_server_interceptors())

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with get_tracer("test").start_as_current_span("handler.work") as span:
            seen.append(span.get_span_context())
        return request

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Off", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=aio_client_interceptors()
        ) as ch:
            await ch.unary_unary("/test.Off/Unary")(b"x", metadata=metadata)
    finally:
        await server.stop(None)
    return seen[0]


def test_tracing_off_creates_no_spans(otlp_collector: OtlpCollector) -> None:
    init_tracing("svc", "otlp_grpc", otlp_collector.endpoint, 1.0)
    init_tracing("svc", "none")  # replaces (and flushes) the provider above
    assert not tracing_enabled()
    assert (
        aio_server_interceptors() == []
        and aio_client_interceptors() == []
        and sync_server_interceptors() == []
    )
    raw = grpc.insecure_channel("127.0.0.1:1")
    assert traced_channel(raw) is raw
    raw.close()
    # Even a caller's traceparent starts nothing: the handler's own span is a no-op.
    seen = asyncio.run(
        _serve_and_call((("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
    )
    assert not seen.is_valid
    assert not get_tracer("x").start_span("y").is_recording()
    assert flush_tracing()
    assert otlp_collector.spans() == []


def test_interceptor_passes_handler_through_when_off() -> None:
    init_tracing("svc", "none")
    sentinel = grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    async def continuation(details):
        return sentinel

    details = type("Details", (), {"method": "/test.Off/Unary", "invocation_metadata": ()})()
    assert asyncio.run(AioTracingServerInterceptor().intercept_service(continuation, details)) is sentinel


def test_otlp_http_exporter(otlp_collector: OtlpCollector) -> None:
    init_tracing("svc-http", "otlp_http", otlp_collector.http_endpoint, 1.0)
    with get_tracer("test").start_as_current_span("over-http"):
        pass
    assert flush_tracing()
    span = otlp_collector.wait_for_span(lambda s: s.name == "over-http")
    assert span.service_name == "svc-http"


def test_console_exporter_writes_spans_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    init_tracing("svc-console", "console")
    with get_tracer("test").start_as_current_span("to-console"):
        pass
    flush_tracing()
    out, err = capfd.readouterr()
    assert "to-console" not in out
    assert json.loads(err[err.index("{") :].split("\n}\n")[0] + "\n}")["name"] == "to-console"


def test_sample_ratio_zero_keeps_nothing_but_still_propagates(otlp_collector: OtlpCollector) -> None:
    init_tracing("svc", "otlp_grpc", otlp_collector.endpoint, 0.0)
    assert tracing_enabled()
    with get_tracer("test").start_as_current_span("unsampled") as span:
        assert not span.is_recording()
    # A sampled parent from upstream is honoured (ParentBased).
    seen = asyncio.run(
        _serve_and_call((("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),))
    )
    assert format(seen.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert flush_tracing()
    spans = otlp_collector.wait_for_spans(2)
    assert sorted(s.name for s in spans) == ["handler.work", "test.Off/Unary"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("svc", "jaeger"), "unknown tracing exporter 'jaeger'"),
        (("svc", "otlp_grpc", "", 1.5), r"within \[0, 1\]"),
    ],
)
def test_bad_options_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        init_tracing(*args)


def _ctx(trace_id: int, span_id: int, sampled: bool) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)


def test_step_span_joins_first_sampled_request_and_links_all(otlp_collector: OtlpCollector) -> None:
    init_tracing("scheduler", "otlp_grpc", otlp_collector.endpoint, 1.0)
    tracer = get_tracer("test")
    unsampled, first, second = _ctx(1, 11, False), _ctx(2, 22, True), _ctx(3, 33, True)
    assert start_step_span(tracer, [unsampled], {sc.STEP_BATCH_SIZE: 1}) is None
    span = start_step_span(
        tracer, [unsampled, first, second], {sc.STEP_BATCH_SIZE: 3, sc.STEP_DECODE_TOKENS: 3}
    )
    assert span is not None
    with trace.use_span(span, end_on_exit=True):
        pass
    assert flush_tracing()
    (step,) = otlp_collector.wait_for_spans(1)
    assert step.name == sc.SPAN_ENGINE_STEP
    assert (step.trace_id, step.parent_span_id) == (format(2, "032x"), format(22, "016x"))
    assert step.links == [(format(2, "032x"), format(22, "016x")), (format(3, "032x"), format(33, "016x"))]
    assert step.attributes[sc.STEP_BATCH_SIZE] == 3


def test_polls_are_traced_only_inside_a_callers_trace(otlp_collector: OtlpCollector) -> None:
    init_tracing("svc", "otlp_grpc", otlp_collector.endpoint, 1.0)
    policy = ServerTracePolicy(parent_required=("/test.Poll/Get",))

    async def run() -> None:
        server = grpc.aio.server(interceptors=[AioTracingServerInterceptor(policy)])

        async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Poll", {"Get": grpc.unary_unary_rpc_method_handler(get)}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=aio_client_interceptors()
            ) as ch:
                await ch.unary_unary("/test.Poll/Get")(b"unparented poll")
                with get_tracer("test").start_as_current_span("caller"):
                    await ch.unary_unary("/test.Poll/Get")(b"inside a trace")
        finally:
            await server.stop(None)

    asyncio.run(run())
    assert flush_tracing()
    spans = otlp_collector.wait_for_spans(2)
    assert sorted(s.name for s in spans) == ["caller", "test.Poll/Get"]
    (poll,) = [s for s in spans if s.name == "test.Poll/Get"]
    assert poll.parent_span_id == next(s.span_id for s in spans if s.name == "caller")
    assert not ServerTracePolicy().traces("/grpc.health.v1.Health/Check", [("traceparent", "x")])
    assert not ServerTracePolicy().traces("/infermesh.v1.SchedulerService/GetLoad", [])
    assert ServerTracePolicy().traces("/infermesh.v1.SchedulerService/Submit", [])
