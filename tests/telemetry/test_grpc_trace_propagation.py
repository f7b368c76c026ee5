"""The gRPC interceptors carry one trace across real grpc.aio and sync servers."""

from __future__ import annotations

import asyncio
import contextvars
from concurrent import futures

import grpc
import pytest
from infermesh_shared.telemetry import (
    aio_client_interceptors,
    aio_server_interceptors,
    flush_tracing,
    get_tracer,
    sync_server_interceptors,
    traced_channel,
)
from infermesh_shared.telemetry import semconv as sc
from opentelemetry import trace

from tests.telemetry.otlp_collector import OtlpCollector

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
STATUS_ERROR = 2
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


def _tracer() -> trace.Tracer:
    return get_tracer("test")


# --- a sync server (the worker's kind): unary, streaming and failing methods ----------------


def _sync_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    with _tracer().start_as_current_span("sync.work"):
        return b"sync:" + request


def _sync_stream(request: bytes, context: grpc.ServicerContext):
    for i in range(3):
        with _tracer().start_as_current_span(f"sync.chunk{i}"):
            yield bytes([i])


def _sync_fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(_CODES[request], "refused on purpose")


_CODES = {b"invalid": grpc.StatusCode.INVALID_ARGUMENT, b"unavailable": grpc.StatusCode.UNAVAILABLE}


def _start_sync_server() -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=sync_server_interceptors())
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Sync",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_sync_unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(_sync_stream),
                    "Fail": grpc.unary_unary_rpc_method_handler(_sync_fail),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


# --- two aio servers (the frontend's and scheduler's kind): A streams, calling B per message ----


async def _start_aio_servers(sync_target: str) -> tuple[grpc.aio.Server, grpc.aio.Server, str, list]:
    b_server = grpc.aio.server(interceptors=aio_server_interceptors())

    async def b_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with _tracer().start_as_current_span("b.work"):
            await asyncio.sleep(0)
            return b"b:" + request

    b_server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.B", {"Unary": grpc.unary_unary_rpc_method_handler(b_unary)}
            )
        ]
    )
    b_port = b_server.add_insecure_port("127.0.0.1:0")
    await b_server.start()
    b_channel = grpc.aio.insecure_channel(f"127.0.0.1:{b_port}", interceptors=aio_client_interceptors())
    call_b = b_channel.unary_unary("/test.B/Unary")
    sync_channel = traced_channel(grpc.insecure_channel(sync_target))
    call_sync = sync_channel.unary_unary("/test.Sync/Unary")

    a_server = grpc.aio.server(interceptors=aio_server_interceptors())

    async def a_stream(request: bytes, context: grpc.aio.ServicerContext):
        for i in range(2):
            yield await call_b(request + bytes([i]))
        # A blocking call from a thread, as a service would make one: the context must follow.
        loop = asyncio.get_running_loop()
        yield await loop.run_in_executor(None, contextvars.copy_context().run, call_sync, request)

    async def a_write_stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.write(await call_b(request))

    async def a_fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(_CODES[request], "refused on purpose")

    a_server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.A",
                {
                    "Stream": grpc.unary_stream_rpc_method_handler(a_stream),
                    "WriteStream": grpc.unary_stream_rpc_method_handler(a_write_stream),
                    "Fail": grpc.unary_unary_rpc_method_handler(a_fail),
                },
            )
        ]
    )
    a_port = a_server.add_insecure_port("127.0.0.1:0")
    await a_server.start()
    return a_server, b_server, f"127.0.0.1:{a_port}", [b_channel, sync_channel]


async def _run_aio_calls(sync_target: str) -> dict[str, object]:
    a_server, b_server, a_target, channels = await _start_aio_servers(sync_target)
    results: dict[str, object] = {}
    try:
        async with grpc.aio.insecure_channel(a_target, interceptors=aio_client_interceptors()) as channel:
            with _tracer().start_as_current_span("client.root") as root:
                results["root"] = root.get_span_context()
                call = channel.unary_stream("/test.A/Stream")(b"x")
                results["stream"] = [m async for m in call]
            with _tracer().start_as_current_span("client.write_root") as write_root:
                results["write_root"] = write_root.get_span_context()
                call = channel.unary_stream("/test.A/WriteStream")(b"w")
                results["write"] = [await call.read()]
        # No current span on the caller: the metadata it sends is the whole parent.
        async with grpc.aio.insecure_channel(a_target) as raw:
            metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),)
            results["continued"] = [
                m async for m in raw.unary_stream("/test.A/Stream")(b"c", metadata=metadata)
            ]
            for name in ("invalid", "unavailable"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw.unary_unary("/test.A/Fail")(name.encode())
                results[f"fail_{name}"] = err.value.code()
    finally:
        await channels[0].close()
        channels[1].close()
        await a_server.stop(None)
        await b_server.stop(None)
    return results


def test_one_trace_spans_aio_and_sync_servers(traced_process: OtlpCollector) -> None:
    sync_server, sync_target = _start_sync_server()
    try:
        results = asyncio.run(_run_aio_calls(sync_target))
    finally:
        sync_server.stop(None)
    assert results["stream"] == [b"b:x\x00", b"b:x\x01", b"sync:x"]
    assert results["write"] == [b"b:w"]
    assert results["fail_invalid"] == grpc.StatusCode.INVALID_ARGUMENT
    flush_tracing()

    root_ctx = results["root"]
    trace_id = format(root_ctx.trace_id, "032x")
    # client.root, A server span, 2 x (B server span + b.work), sync server span + sync.work
    traced_process.wait_for(lambda spans: sum(s.trace_id == trace_id for s in spans) >= 8)
    tree = traced_process.tree(trace_id)
    (root,) = tree.roots()
    assert root.name == "client.root"
    (a_span,) = tree.children_of(root)
    assert (a_span.name, a_span.kind) == ("test.A/Stream", SERVER_KIND)
    assert a_span.attributes[sc.RPC_SYSTEM] == "grpc"
    assert a_span.attributes[sc.RPC_SERVICE] == "test.A"
    assert a_span.attributes[sc.RPC_METHOD] == "Stream"
    assert a_span.attributes[sc.RPC_GRPC_STATUS_CODE] == 0
    under_a = sorted(s.name for s in tree.children_of(a_span))
    assert under_a == ["test.B/Unary", "test.B/Unary", "test.Sync/Unary"]
    for b_span in tree.named("test.B/Unary"):
        assert [s.name for s in tree.children_of(b_span)] == ["b.work"]
    (sync_span,) = tree.named("test.Sync/Unary")
    assert [s.name for s in tree.children_of(sync_span)] == ["sync.work"]
    # The span ends after the stream's last message, so it covers the whole RPC.
    assert a_span.end_time_unix_nano >= max(s.end_time_unix_nano for s in tree.children_of(a_span))

    write_trace = traced_process.tree(format(results["write_root"].trace_id, "032x"))
    traced_process.wait_for(lambda spans: len(traced_process.tree(write_trace.trace_id).spans) >= 4)
    write_tree = traced_process.tree(write_trace.trace_id)
    (write_span,) = write_tree.named("test.A/WriteStream")
    assert write_tree.parent_of(write_span).name == "client.write_root"
    assert [s.name for s in write_tree.children_of(write_span)] == ["test.B/Unary"]


def test_client_traceparent_is_continued(traced_process: OtlpCollector) -> None:
    sync_server, sync_target = _start_sync_server()
    try:
        asyncio.run(_run_aio_calls(sync_target))
    finally:
        sync_server.stop(None)
    flush_tracing()
    traced_process.wait_for(lambda spans: sum(s.trace_id == TRACE_ID for s in spans) >= 7)
    tree = traced_process.tree(TRACE_ID)
    (a_span,) = tree.named("test.A/Stream")
    assert a_span.parent_span_id == PARENT_SPAN_ID
    assert len(tree.named("test.B/Unary")) == 2
    assert tree.parent_of(tree.named("test.Sync/Unary")[0]) is a_span


def test_server_span_status_follows_grpc_code(traced_process: OtlpCollector) -> None:
    sync_server, sync_target = _start_sync_server()
    try:
        asyncio.run(_run_aio_calls(sync_target))
        channel = traced_channel(grpc.insecure_channel(sync_target))
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/test.Sync/Fail")(b"unavailable")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        sync_server.stop(None)
    flush_tracing()
    spans = traced_process.wait_for(
        lambda spans: sum(s.name in ("test.A/Fail", "test.Sync/Fail") for s in spans) >= 3
    )
    by_code = {(s.name, s.attributes[sc.RPC_GRPC_STATUS_CODE]): s for s in spans if s.name.endswith("/Fail")}
    # A caller's mistake leaves the server span's status unset; a server failure marks it ERROR.
    assert by_code[("test.A/Fail", grpc.StatusCode.INVALID_ARGUMENT.value[0])].status_code == 0
    assert by_code[("test.A/Fail", grpc.StatusCode.UNAVAILABLE.value[0])].status_code == STATUS_ERROR
    assert by_code[("test.Sync/Fail", grpc.StatusCode.UNAVAILABLE.value[0])].status_code == STATUS_ERROR


def test_sync_stream_handler_spans_are_children(traced_process: OtlpCollector) -> None:
    sync_server, sync_target = _start_sync_server()
    channel = traced_channel(grpc.insecure_channel(sync_target))
    try:
        with _tracer().start_as_current_span("client.root") as root:
            chunks = list(channel.unary_stream("/test.Sync/Stream")(b""))
    finally:
        channel.close()
        sync_server.stop(None)
    assert chunks == [b"\x00", b"\x01", b"\x02"]
    flush_tracing()
    trace_id = format(root.get_span_context().trace_id, "032x")
    traced_process.wait_for(lambda spans: sum(s.trace_id == trace_id for s in spans) >= 5)
    tree = traced_process.tree(trace_id)
    (stream_span,) = tree.named("test.Sync/Stream")
    assert tree.parent_of(stream_span).name == "client.root"
    assert sorted(s.name for s in tree.children_of(stream_span)) == [
        "sync.chunk0",
        "sync.chunk1",
        "sync.chunk2",
    ]
