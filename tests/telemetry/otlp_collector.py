"""A real OTLP/gRPC trace (and metrics) receiver for tests: spans land in memory, grouped by trace.

Services under test export to `collector.endpoint` with `tracing_exporter: otlp_grpc`; tests
wait for the spans they expect and check parent/child links and attributes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(slots=True)
class CollectedEvent:
    name: str
    attributes: dict[str, Any]
    time_unix_nano: int


@dataclass(slots=True)
class CollectedSpan:
    """One received span; ids are lowercase hex, parent_span_id is "" for a root span."""

    service_name: str
    # service.instance.id: which process of that service (e.g. which worker rank) sent it.
    service_instance_id: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    events: list[CollectedEvent]
    links: list[tuple[str, str]]
    status_code: int
    start_time_unix_nano: int
    end_time_unix_nano: int

    def event_names(self) -> list[str]:
        return [e.name for e in self.events]


@dataclass(slots=True)
class SpanTree:
    """The spans of one trace with their parent/child relations."""

    trace_id: str
    spans: list[CollectedSpan]
    children: dict[str, list[CollectedSpan]] = field(default_factory=dict)

    def roots(self) -> list[CollectedSpan]:
        ids = {s.span_id for s in self.spans}
        return [s for s in self.spans if s.parent_span_id not in ids]

    def children_of(self, span: CollectedSpan) -> list[CollectedSpan]:
        return self.children.get(span.span_id, [])

    def parent_of(self, span: CollectedSpan) -> CollectedSpan | None:
        return next((s for s in self.spans if s.span_id == span.parent_span_id), None)

    def named(self, name: str) -> list[CollectedSpan]:
        return [s for s in self.spans if s.name == name]

    def services(self) -> set[str]:
        return {s.service_name for s in self.spans}


def _any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if kind is None:
        return None
    return getattr(value, kind)


def _attributes(kvs) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


def _collected_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[CollectedSpan]:
    received: list[CollectedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        instance = str(resource.get("service.instance.id", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    CollectedSpan(
                        service_name=service,
                        service_instance_id=instance,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        events=[
                            CollectedEvent(e.name, _attributes(e.attributes), e.time_unix_nano)
                            for e in span.events
                        ],
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        status_code=span.status.code,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                    )
                )
    return received


@dataclass(slots=True)
class CollectedHistogramPoint:
    """One histogram data point of an OTLP metric export."""

    service_name: str
    metric_name: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float


def _collected_points(
    request: metrics_service_pb2.ExportMetricsServiceRequest,
) -> list[CollectedHistogramPoint]:
    points = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.histogram.data_points:
                    points.append(
                        CollectedHistogramPoint(
                            resource.get("service.name", ""),
                            metric.name,
                            metric.unit,
                            _attributes(point.attributes),
                            point.count,
                            point.sum,
                        )
                    )
    return points


class _MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: Callable[[list[CollectedHistogramPoint]], None]) -> None:
        self._sink = sink

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        self._sink(_collected_points(request))
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: Callable[[list[CollectedSpan]], None]) -> None:
        self._sink = sink

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        self._sink(_collected_spans(request))
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_handler(sink: Callable[[list[CollectedSpan]], None]) -> type[BaseHTTPRequestHandler]:
    class OtlpHttpHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's method name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404 if self.path != "/v1/traces" else 415)
                return
            sink(_collected_spans(trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
            payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
            pass

    return OtlpHttpHandler


class OtlpCollector:
    """OTLP receivers on 127.0.0.1 at free ports, keeping every span they receive.

    `endpoint` speaks OTLP/gRPC (TraceService), `http_endpoint` OTLP/HTTP protobuf.
    """

    def __init__(self) -> None:
        self._spans: list[CollectedSpan] = []
        self._cond = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceReceiver(self._add), self._server)
        # Histogram points as exported (cumulative: the latest point per series holds the totals).
        self.histogram_points: list[CollectedHistogramPoint] = []
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsReceiver(self._add_points), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self._add))
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()

    @property
    def endpoint(self) -> str:
        """What to give a service as `otlp_endpoint` with `tracing_exporter: otlp_grpc`."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        """What to give a service as `otlp_endpoint` with `tracing_exporter: otlp_http`."""
        return f"http://127.0.0.1:{self._http.server_port}"

    def _add(self, spans: list[CollectedSpan]) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()

    def _add_points(self, points: list[CollectedHistogramPoint]) -> None:
        with self._cond:
            self.histogram_points.extend(points)
            self._cond.notify_all()

    def wait_for_points(
        self, predicate: Callable[[list[CollectedHistogramPoint]], bool], timeout_s: float = 30.0
    ) -> list[CollectedHistogramPoint]:
        """Every histogram point so far, once `predicate(points)` holds; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.histogram_points):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({(p.service_name, p.metric_name) for p in self.histogram_points})
                    raise TimeoutError(f"metric points never matched within {timeout_s}s; have {names}")
                self._cond.wait(remaining)
            return list(self.histogram_points)

    def spans(self) -> list[CollectedSpan]:
        with self._cond:
            return list(self._spans)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[CollectedSpan]], bool], timeout_s: float = 10.0
    ) -> list[CollectedSpan]:
        """Every span so far, once `predicate(spans)` holds; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self._spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({(s.service_name, s.name) for s in self._spans})
                    raise TimeoutError(
                        f"spans never matched within {timeout_s}s; have {len(self._spans)}: {names}"
                    )
                self._cond.wait(remaining)
            return list(self._spans)

    def wait_for_spans(self, count: int, timeout_s: float = 10.0) -> list[CollectedSpan]:
        """Every span so far, once at least `count` have arrived."""
        return self.wait_for(lambda spans: len(spans) >= count, timeout_s)

    def wait_for_span(
        self, predicate: Callable[[CollectedSpan], bool], timeout_s: float = 10.0
    ) -> CollectedSpan:
        """The first received span satisfying `predicate`, waiting for it to arrive."""
        spans = self.wait_for(lambda spans: any(predicate(s) for s in spans), timeout_s)
        return next(s for s in spans if predicate(s))

    def tree(self, trace_id: str) -> SpanTree:
        """The spans received so far for `trace_id`, linked parent to child."""
        spans = [s for s in self.spans() if s.trace_id == trace_id]
        tree = SpanTree(trace_id=trace_id, spans=spans)
        for span in spans:
            if span.parent_span_id:
                tree.children.setdefault(span.parent_span_id, []).append(span)
        return tree

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join(timeout=5)
