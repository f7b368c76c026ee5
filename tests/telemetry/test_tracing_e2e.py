"""Tracing and metrics across frontend, scheduler and worker running as separate processes.

The three services export spans over OTLP/gRPC to an in-test collector and serve /metrics;
the tests follow one request through every hop and count requests at both request-facing
services.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from infermesh.v1 import common_pb2, frontend_pb2, scheduler_pb2
from infermesh_shared.telemetry import semconv as sc

from tests.e2e.harness import (
    build_served_model,
    frontend_stub,
    generate_request,
    scheduler_stub,
    start_cluster,
    wait_all_blocks_free,
)
from tests.free_port import free_port
from tests.telemetry.metrics_scrape import scrape_service
from tests.telemetry.otlp_collector import CollectedSpan, OtlpCollector, SpanTree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FRONTEND, SCHEDULER, WORKER = "infermesh-frontend", "infermesh-scheduler", "infermesh-worker"
SERVER_KIND = 2


@dataclass
class TracedCluster:
    cluster: object
    collector: OtlpCollector
    frontend_metrics: str
    scheduler_metrics: str
    worker_metrics: str
    http_url: str


@pytest.fixture(scope="module")
def traced_cluster(tmp_path_factory) -> Iterator[TracedCluster]:
    collector = OtlpCollector()
    model_dir = build_served_model("llama", tmp_path_factory.mktemp("traced-model"))
    ports = [free_port() for _ in range(3)]
    http_port = free_port()

    def observability(port: int) -> list[str]:
        return [
            "--tracing-exporter", "otlp_grpc", "--otlp-endpoint", collector.endpoint,
            "--tracing-sample-ratio", "1.0", "--metrics-port", str(port), "--log-format", "json",
        ]  # fmt: skip

    cluster = None
    # The frontend's OTel GenAI metrics: exported every second instead of every 10 s.
    saved_interval = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL")
    os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "1000"
    try:
        cluster = start_cluster(
            model_dir,
            tmp_path_factory.mktemp("traced-logs"),
            scheduler_args=["--dtype", "fp32", "--total-blocks", "256", *observability(ports[1])],
            worker_args=observability(ports[2]),
            frontend_args=[*observability(ports[0]), "--http-port", str(http_port)],
        )
        yield TracedCluster(
            cluster,
            collector,
            *(f"http://127.0.0.1:{p}/metrics" for p in ports),
            f"http://127.0.0.1:{http_port}",
        )
    finally:
        if saved_interval is None:
            os.environ.pop("OTEL_METRIC_EXPORT_INTERVAL", None)
        else:
            os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = saved_interval
        if cluster is not None:
            cluster.stop()
        collector.stop()


def _generate(
    cluster: TracedCluster, request_id: str, max_tokens: int = 4, metadata=()
) -> frontend_pb2.GenerateResponse:
    request = generate_request(text="Hello tracing", temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    request.request_id = request_id
    stub = frontend_stub(cluster.cluster.frontend_address)
    return stub.Generate(frontend_pb2.GenerateRequest(input=request), timeout=60, metadata=metadata)


def _request_trace(collector: OtlpCollector, request_id: str, min_worker_spans: int) -> SpanTree:
    """Waits until the trace of `request_id` holds its spans from all three services."""

    def complete(spans: list[CollectedSpan]) -> bool:
        front = [
            s
            for s in spans
            if s.name == sc.SPAN_FRONTEND_REQUEST and s.attributes.get(sc.CLIENT_REQUEST_ID) == request_id
        ]
        if not front:
            return False
        mine = [s for s in spans if s.trace_id == front[0].trace_id]
        return (
            sum(s.service_name == WORKER for s in mine) >= min_worker_spans
            and any(s.name == sc.SPAN_SCHEDULER_REQUEST for s in mine)
            and any(s.name == "infermesh.v1.FrontendService/Generate" for s in mine)
        )

    spans = collector.wait_for(complete, timeout_s=30)
    front = next(
        s
        for s in spans
        if s.name == sc.SPAN_FRONTEND_REQUEST and s.attributes.get(sc.CLIENT_REQUEST_ID) == request_id
    )
    return collector.tree(front.trace_id)


def _one(tree: SpanTree, name: str) -> CollectedSpan:
    spans = tree.named(name)
    assert len(spans) == 1, f"expected one {name} span, got {[s.name for s in tree.spans]}"
    return spans[0]


def test_one_generate_is_one_trace_across_all_services(traced_cluster: TracedCluster) -> None:
    max_tokens = 4
    response = _generate(traced_cluster, "trace-me", max_tokens)
    assert len(response.completions[0].token_ids) == max_tokens
    # A prefill step and max_tokens - 1 decode steps, each with its worker Execute.
    tree = _request_trace(traced_cluster.collector, "trace-me", min_worker_spans=max_tokens)
    assert tree.services() == {FRONTEND, SCHEDULER, WORKER}

    (root,) = tree.roots()
    assert (root.name, root.service_name, root.kind) == (
        "infermesh.v1.FrontendService/Generate",
        FRONTEND,
        SERVER_KIND,
    )
    assert root.parent_span_id == ""
    front = _one(tree, sc.SPAN_FRONTEND_REQUEST)
    assert tree.parent_of(front) is root
    assert front.attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] == max_tokens
    assert front.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == max_tokens
    assert front.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["length"]
    assert "route" in front.event_names() and "first_token" in front.event_names()
    assert tree.parent_of(_one(tree, sc.SPAN_TOKENIZE)) is front
    stream = _one(tree, sc.SPAN_STREAM)
    assert tree.parent_of(stream) is front

    submit = _one(tree, "infermesh.v1.SchedulerService/Submit")
    assert (submit.service_name, tree.parent_of(submit)) == (SCHEDULER, stream)
    request = _one(tree, sc.SPAN_SCHEDULER_REQUEST)
    assert tree.parent_of(request) is submit
    # The scheduler knows the request by the frontend-made id, the client's id stays at the frontend.
    assert request.attributes[sc.REQUEST_ID] == front.attributes[sc.REQUEST_ID] != "trace-me"
    assert front.attributes[sc.CLIENT_REQUEST_ID] == front.attributes[sc.GEN_AI_RESPONSE_ID] == "trace-me"
    assert request.attributes[sc.PROMPT_TOKENS] == response.usage.prompt_tokens
    assert request.attributes[sc.OUTPUT_TOKENS] == max_tokens
    # Usage on one span per request, so UIs summing it over the trace count it once.
    assert [s.name for s in tree.spans if sc.GEN_AI_USAGE_OUTPUT_TOKENS in s.attributes] == [front.name]
    assert [s.name for s in tree.spans if sc.GEN_AI_USAGE_INPUT_TOKENS in s.attributes] == [front.name]
    model = traced_cluster.cluster.spec.model_path.name
    for span in (front, request):
        assert span.attributes[sc.GEN_AI_REQUEST_MODEL] == span.attributes[sc.GEN_AI_RESPONSE_MODEL] == model
        assert span.attributes[sc.GEN_AI_OPERATION_NAME] == sc.OPERATION_TEXT_COMPLETION
    assert request.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["length"]
    assert request.attributes[sc.REQUEST_PRIORITY] == 0
    assert request.attributes[sc.QUEUE_TIME_MS] >= 0
    assert request.attributes[sc.TTFT_MS] >= request.attributes[sc.QUEUE_TIME_MS]
    assert request.event_names() == ["queued", "scheduled", "first_token", "finished"]

    steps = sorted(tree.named(sc.SPAN_ENGINE_STEP), key=lambda s: s.attributes[sc.STEP_ID])
    assert len(steps) >= max_tokens
    for step in steps:
        assert tree.parent_of(step) is request
        assert (request.trace_id, request.span_id) in step.links
        executes = tree.children_of(step)
        assert [(s.name, s.service_name, s.kind) for s in executes] == [
            ("infermesh.v1.WorkerService/Execute", WORKER, SERVER_KIND)
        ]
    prompt_len = response.usage.prompt_tokens
    assert sum(s.attributes[sc.STEP_PREFILL_TOKENS] for s in steps) == prompt_len
    assert sum(s.attributes[sc.STEP_DECODE_TOKENS] for s in steps) == max_tokens - 1
    assert all(s.attributes[sc.STEP_BATCH_SIZE] == 1 for s in steps)


def test_client_traceparent_is_continued_through_every_service(traced_cluster: TracedCluster) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    request = generate_request(text="Stream me", temperature=0.0, max_tokens=3, ignore_eos=True)
    request.request_id = "client-traced"
    stub = frontend_stub(traced_cluster.cluster.frontend_address)
    chunks = list(
        stub.GenerateStream(frontend_pb2.GenerateStreamRequest(input=request), timeout=60, metadata=metadata)
    )
    assert sum(len(c.token_ids) for c in chunks) == 3

    collector = traced_cluster.collector
    collector.wait_for(
        lambda spans: (
            {s.service_name for s in spans if s.trace_id == trace_id} == {FRONTEND, SCHEDULER, WORKER}
            and any(s.trace_id == trace_id and s.name == sc.SPAN_SCHEDULER_REQUEST for s in spans)
        ),
        timeout_s=30,
    )
    tree = collector.tree(trace_id)
    server_span = _one(tree, "infermesh.v1.FrontendService/GenerateStream")
    assert server_span.parent_span_id == parent_id
    assert _one(tree, sc.SPAN_FRONTEND_REQUEST).attributes[sc.GEN_AI_REQUEST_STREAM] is True
    assert _one(tree, sc.SPAN_FRONTEND_REQUEST).attributes[sc.CLIENT_REQUEST_ID] == "client-traced"
    assert (
        _one(tree, sc.SPAN_SCHEDULER_REQUEST).attributes[sc.REQUEST_ID]
        == (_one(tree, sc.SPAN_FRONTEND_REQUEST).attributes[sc.REQUEST_ID])
    )


def test_frontend_exports_the_otel_genai_server_metrics(traced_cluster: TracedCluster) -> None:
    _generate(traced_cluster, "genai-metrics", max_tokens=4)
    model = traced_cluster.cluster.spec.model_path.name
    names = (
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.server.request.duration",
    )

    def recorded(points) -> bool:
        return all(any(p.metric_name == name and p.count > 0 for p in points) for name in names)

    points = traced_cluster.collector.wait_for_points(recorded, timeout_s=30)
    for name in names:
        point = next(p for p in reversed(points) if p.metric_name == name)
        assert (point.service_name, point.unit) == (FRONTEND, "s")
        assert point.attributes[sc.GEN_AI_REQUEST_MODEL] == model
        assert point.attributes[sc.GEN_AI_OPERATION_NAME] == sc.OPERATION_TEXT_COMPLETION
        assert point.sum > 0
    # Only the frontend records them: the scheduler would count every request a second time.
    assert {p.service_name for p in points if p.metric_name in names} == {FRONTEND}


def _post(url: str, body: dict, traceparent: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "traceparent": traceparent},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_http_chat_and_client_error_spans(traced_cluster: TracedCluster) -> None:
    collector = traced_cluster.collector
    model = traced_cluster.cluster.spec.model_path.name
    chat_trace, wrong_trace = secrets.token_hex(16), secrets.token_hex(16)
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    url = f"{traced_cluster.http_url}/v1/chat/completions"
    assert _post(url, chat, f"00-{chat_trace}-{secrets.token_hex(8)}-01") == 200
    assert (
        _post(url, {**chat, "model": "no-such-model"}, f"00-{wrong_trace}-{secrets.token_hex(8)}-01") == 404
    )

    collector.wait_for(
        lambda spans: (
            any(s.trace_id == chat_trace and s.name == sc.SPAN_SCHEDULER_REQUEST for s in spans)
            and any(s.trace_id == wrong_trace for s in spans)
        ),
        timeout_s=30,
    )
    tree = collector.tree(chat_trace)
    server = _one(tree, "POST /v1/chat/completions")
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    # The messages are rendered and tokenized before the request span exists: under the HTTP span.
    assert tree.parent_of(_one(tree, sc.SPAN_TOKENIZE)) is server
    for name in (sc.SPAN_FRONTEND_REQUEST, sc.SPAN_SCHEDULER_REQUEST):
        assert _one(tree, name).attributes[sc.GEN_AI_OPERATION_NAME] == sc.OPERATION_CHAT, name

    (refused,) = collector.tree(wrong_trace).spans
    assert refused.attributes["http.response.status_code"] == 404
    assert refused.status_code == 0, "a client error is not a server error"
    assert "exception" not in refused.event_names()


def test_api_port_serves_the_frontends_metrics(traced_cluster: TracedCluster) -> None:
    model = traced_cluster.cluster.spec.model_path.name
    _generate(traced_cluster, "metrics-on-api-port", max_tokens=2)
    on_api_port = scrape_service(f"{traced_cluster.http_url}/metrics", "frontend", model)
    on_metrics_port = scrape_service(traced_cluster.frontend_metrics, "frontend", model)
    key = ("infermesh_requests_total", (("status", "ok"),))
    assert on_api_port[key] >= 1
    assert set(on_api_port) == set(on_metrics_port)


def test_workers_never_start_a_trace(traced_cluster: TracedCluster) -> None:
    collector = traced_cluster.collector
    # A client that decided not to sample: nothing of its request may be exported.
    unsampled_trace = secrets.token_hex(16)
    unsampled = (("traceparent", f"00-{unsampled_trace}-{secrets.token_hex(8)}-00"),)
    _generate(traced_cluster, "not-sampled", max_tokens=3, metadata=unsampled)
    _generate(traced_cluster, "sampled-after", max_tokens=3)
    # Exported after the unsampled request's steps: those would have arrived by now.
    _request_trace(collector, "sampled-after", min_worker_spans=3)
    spans = collector.spans()
    assert [s.name for s in spans if s.trace_id == unsampled_trace] == []
    worker_roots = [s.name for s in spans if s.service_name == WORKER and not s.parent_span_id]
    assert worker_roots == [], "worker calls outside a traced step started their own traces"


def test_worker_startup_calls_sit_inside_the_formation_span(traced_cluster: TracedCluster) -> None:
    spans = traced_cluster.collector.wait_for(
        lambda spans: any(s.name == "infermesh.scheduler.form_group" for s in spans), timeout_s=30
    )
    (form,) = [s for s in spans if s.name == "infermesh.scheduler.form_group"]
    assert (form.service_name, form.parent_span_id) == (SCHEDULER, "")
    register = [s for s in spans if s.name == "infermesh.v1.SchedulerService/RegisterWorker"]
    assert register and (register[0].trace_id, register[0].span_id) in form.links
    tree = traced_cluster.collector.tree(form.trace_id)
    calls = {s.name: s for s in tree.children_of(form)}
    assert {"infermesh.v1.WorkerService/LoadModel", "infermesh.v1.WorkerService/InitKVCache"} <= set(calls)
    for call in calls.values():
        assert call.service_name == WORKER
        assert form.start_time_unix_nano <= call.start_time_unix_nano
        assert call.end_time_unix_nano <= form.end_time_unix_nano, f"{call.name} outlived its parent"


def _delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_every_request_and_rejection(traced_cluster: TracedCluster) -> None:
    wait_all_blocks_free(traced_cluster.cluster.scheduler_address)
    # Every series names its service and the served model (the model directory's name).
    model = traced_cluster.cluster.spec.model_path.name
    front_before = scrape_service(traced_cluster.frontend_metrics, "frontend", model)
    sched_before = scrape_service(traced_cluster.scheduler_metrics, "scheduler", model)
    worker_before = scrape_service(traced_cluster.worker_metrics, "worker", model)
    n = 3
    for i in range(n):
        _generate(traced_cluster, f"counted-{i}", max_tokens=3)
    # Refused at the frontend (empty prompt) and at the scheduler (token id beyond the vocabulary).
    stub = frontend_stub(traced_cluster.cluster.frontend_address)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Generate(frontend_pb2.GenerateRequest(input=generate_request(text="", max_tokens=2)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    submit = scheduler_pb2.SubmitRequest(
        request_id="bad-token",
        prompt_token_ids=[10**6],
        sampling=common_pb2.SamplingParams(max_tokens=2, n=1),
    )
    with pytest.raises(grpc.RpcError) as bad:
        list(scheduler_stub(traced_cluster.cluster.scheduler_address).Submit(submit, timeout=30))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wait_all_blocks_free(traced_cluster.cluster.scheduler_address)

    front = scrape_service(traced_cluster.frontend_metrics, "frontend", model)
    sched = scrape_service(traced_cluster.scheduler_metrics, "scheduler", model)
    worker = scrape_service(traced_cluster.worker_metrics, "worker", model)
    for after, before in ((front, front_before), (sched, sched_before)):
        assert _delta(after, before, "infermesh_requests_total", status="ok") == n
        assert _delta(after, before, "infermesh_time_to_first_token_seconds_count") == n
        assert _delta(after, before, "infermesh_e2e_request_latency_seconds_count") == n
        assert _delta(after, before, "infermesh_generation_tokens_total") == 3 * n
        # Two gaps between three tokens per request.
        assert _delta(after, before, "infermesh_inter_token_latency_seconds_count") == 2 * n
        assert _delta(after, before, "infermesh_requests_total", status="invalid_argument") == 1
        assert _delta(after, before, "infermesh_request_success_total", finished_reason="length") == n
        assert _delta(after, before, "infermesh_request_generation_tokens_sum") == 3 * n
        assert _delta(after, before, "infermesh_request_prompt_tokens_count") == n
    assert _delta(sched, sched_before, "infermesh_request_prefill_time_seconds_count") == n
    assert _delta(sched, sched_before, "infermesh_request_decode_time_seconds_count") == n
    assert [key for key in sched if key[0] == "infermesh_cache_config_info"], sched.keys()
    assert _delta(sched, sched_before, "infermesh_queue_time_seconds_count") == n
    assert sched[("infermesh_requests_running", ())] == 0
    assert sched[("infermesh_kv_cache_usage_ratio", ())] == 0
    assert _delta(worker, worker_before, "infermesh_worker_step_seconds_count") >= 3 * n


def test_service_logs_carry_the_trace_id(traced_cluster: TracedCluster) -> None:
    submit = scheduler_pb2.SubmitRequest(
        request_id="logged-refusal",
        prompt_token_ids=[],
        sampling=common_pb2.SamplingParams(max_tokens=2, n=1),
    )
    with pytest.raises(grpc.RpcError):
        list(scheduler_stub(traced_cluster.cluster.scheduler_address).Submit(submit, timeout=30))
    # The scheduler logs the refusal (JSON lines: --log-format json) inside the Submit handler.
    log_path = traced_cluster.cluster.spec.log_dir / "scheduler.log"
    deadline = time.monotonic() + 10
    refusals: list[dict] = []
    while not refusals and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
        refusals = [entry for entry in map(json.loads, lines) if "logged-refusal" in entry["message"]]
    (entry,) = refusals
    assert (entry["service"], entry["level"]) == (SCHEDULER, "INFO")
    assert len(entry["trace_id"]) == 32 and len(entry["span_id"]) == 16
    span = traced_cluster.collector.wait_for_span(lambda s: s.span_id == entry["span_id"], timeout_s=30)
    assert (span.name, span.trace_id) == ("infermesh.v1.SchedulerService/Submit", entry["trace_id"])
    assert span.attributes[sc.RPC_GRPC_STATUS_CODE] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.mark.multiproc
def test_every_tensor_parallel_rank_executes_as_a_child_of_the_step(tmp_path) -> None:
    collector = OtlpCollector()
    model_dir = build_served_model("llama", tmp_path / "model")
    tracing = ["--tracing-exporter", "otlp_grpc", "--otlp-endpoint", collector.endpoint]
    cluster = None
    try:
        cluster = start_cluster(
            model_dir,
            tmp_path / "logs",
            tp_size=2,
            scheduler_args=["--dtype", "fp32", *tracing],
            worker_args=tracing,
            frontend_args=tracing,
        )
        request = generate_request(text="two ranks", temperature=0.0, max_tokens=3, ignore_eos=True)
        request.request_id = "tp2"
        frontend_stub(cluster.frontend_address).Generate(
            frontend_pb2.GenerateRequest(input=request), timeout=60
        )
        tree = _request_trace(collector, "tp2", min_worker_spans=2 * 3)
        steps = tree.named(sc.SPAN_ENGINE_STEP)
        assert len(steps) >= 3
        for step in steps:
            executes = tree.children_of(step)
            assert [s.name for s in executes] == ["infermesh.v1.WorkerService/Execute"] * 2
            # One from each worker process.
            assert len({s.service_instance_id for s in executes}) == 2
            assert {s.attributes[sc.STEP_ID] for s in executes} == {step.attributes[sc.STEP_ID]}
    finally:
        if cluster is not None:
            cluster.stop()
        collector.stop()
