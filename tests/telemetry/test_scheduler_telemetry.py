"""The scheduler's request span, its events, the step spans and the request metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import grpc
from infermesh_scheduler.core.load import LoadSnapshot
from infermesh_scheduler.core.request import (
    FinishReason,
    PriorityClass,
    RequestOutput,
    RequestSpec,
    SamplingOptions,
    Usage,
)
from infermesh_scheduler.core.step_plan import NewSequence, RunningSequence, StepPlan
from infermesh_scheduler.request_telemetry import SchedulerTelemetry, build_scheduler_telemetry
from infermesh_shared.telemetry import (
    RequestMetrics,
    SchedulerMetrics,
    create_registry,
    flush_tracing,
    get_tracer,
    shutdown_tracing,
)
from infermesh_shared.telemetry import semconv as sc

from tests.telemetry.otlp_collector import OtlpCollector

SAMPLING = SamplingOptions(
    temperature=0.5,
    top_p=0.9,
    top_k=0,
    min_p=0.0,
    seed=None,
    max_tokens=3,
    stop_token_ids=(),
    ignore_eos=True,
)


@dataclass(slots=True)
class FakeStepSource:
    inflight: list[str] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)

    def inflight_request_ids(self) -> list[str]:
        return self.inflight


def _spec(request_id: str, prompt_len: int) -> RequestSpec:
    return RequestSpec(
        request_id=request_id,
        prompt_token_ids=list(range(prompt_len)),
        sampling=SAMPLING,
        priority=7,
        priority_class=PriorityClass.THROUGHPUT,
        timeout_s=None,
        client_id="client-a",
        arrival_time=time.monotonic(),
    )


def _new(seq_id: int, prompt_len: int) -> NewSequence:
    return NewSequence(seq_id, list(range(prompt_len)), SAMPLING, [seq_id], 0, prompt_len, 0)


def _token(request_id: str, reason: FinishReason | None = None, usage: Usage | None = None) -> RequestOutput:
    return RequestOutput(request_id, 0, [5], [], reason, usage)


def _sample_count(registry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_request_and_step_spans_with_events_and_metrics(traced_process: OtlpCollector) -> None:
    registry = create_registry("scheduler")
    requests, state = RequestMetrics(registry), SchedulerMetrics(registry, lambda: None)
    telemetry = SchedulerTelemetry(requests, state)
    source = FakeStepSource()
    tracer = get_tracer("test")

    with tracer.start_as_current_span("submit-a") as submit_a:
        telemetry.request_queued(_spec("a", 4))
    with tracer.start_as_current_span("submit-b"):
        telemetry.request_queued(_spec("b", 2))

    # step 1: both prefill; step 2: b is preempted, a decodes; step 3: b resumes by recompute.
    source.inflight = ["a", "b"]
    span1 = telemetry.step_started(source, StepPlan(1, new_sequences=[_new(1, 4), _new(2, 2)]))
    telemetry.outputs_routed([_token("a"), _token("b")])
    telemetry.step_ended(span1, 0.01)
    source.inflight, source.preempted_request_ids = ["a"], ["b"]
    span2 = telemetry.step_started(source, StepPlan(2, running_sequences=[RunningSequence(1, [], 4, 1)]))
    telemetry.outputs_routed([_token("a")])
    telemetry.step_ended(span2, 0.01)
    source.inflight, source.preempted_request_ids = ["a", "b"], []
    resumed = NewSequence(2, [0, 1, 5], SAMPLING, [3], 0, 3, 1)
    plan3 = StepPlan(3, new_sequences=[resumed], running_sequences=[RunningSequence(1, [], 5, 1)])
    span3 = telemetry.step_started(source, plan3)
    usage = Usage(prompt_tokens=4, completion_tokens=3, cached_prompt_tokens=0)
    telemetry.outputs_routed([_token("a", FinishReason.LENGTH, usage), _token("b")])
    telemetry.step_ended(span3, 0.01)
    telemetry.request_ended("a", grpc.StatusCode.OK)
    telemetry.request_ended("b", grpc.StatusCode.CANCELLED, "client went away")
    telemetry.request_rejected(grpc.StatusCode.RESOURCE_EXHAUSTED)

    assert _sample_count(registry, "infermesh_requests_total", {"status": "ok"}) == 1
    assert _sample_count(registry, "infermesh_requests_total", {"status": "cancelled"}) == 1
    assert _sample_count(registry, "infermesh_requests_total", {"status": "resource_exhausted"}) == 1
    assert _sample_count(registry, "infermesh_queue_time_seconds_count") == 2
    assert _sample_count(registry, "infermesh_time_to_first_token_seconds_count") == 2
    # a: tokens in steps 1, 2, 3 -> two gaps; b: step 1 then step 3 -> one gap.
    assert _sample_count(registry, "infermesh_inter_token_latency_seconds_count") == 3
    assert _sample_count(registry, "infermesh_e2e_request_latency_seconds_count") == 1
    assert _sample_count(registry, "infermesh_engine_steps_total") == 3
    assert _sample_count(registry, "infermesh_step_batch_size_sum") == 2 + 1 + 2

    flush_tracing()
    trace_a = format(submit_a.get_span_context().trace_id, "032x")
    traced_process.wait_for(lambda spans: sum(s.name == sc.SPAN_SCHEDULER_REQUEST for s in spans) == 2)
    tree = traced_process.tree(trace_a)
    (request_a,) = tree.named(sc.SPAN_SCHEDULER_REQUEST)
    assert tree.parent_of(request_a).name == "submit-a"
    assert request_a.event_names() == ["queued", "scheduled", "first_token", "finished"]
    assert request_a.attributes[sc.REQUEST_ID] == "a"
    assert request_a.attributes[sc.REQUEST_PRIORITY] == 7
    assert request_a.attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] == 3
    assert request_a.attributes[sc.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert request_a.attributes[sc.PROMPT_TOKENS] == 4
    assert request_a.attributes[sc.OUTPUT_TOKENS] == 3
    assert request_a.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["length"]
    assert request_a.attributes[sc.QUEUE_TIME_MS] >= 0
    assert request_a.attributes[sc.TTFT_MS] >= request_a.attributes[sc.QUEUE_TIME_MS]

    # Every step served a: all three are children of a's request span (a arrived first).
    steps = sorted(tree.children_of(request_a), key=lambda s: s.attributes[sc.STEP_ID])
    assert [s.name for s in steps] == [sc.SPAN_ENGINE_STEP] * 3
    assert [s.attributes[sc.STEP_BATCH_SIZE] for s in steps] == [2, 1, 2]
    assert [(s.attributes[sc.STEP_PREFILL_TOKENS], s.attributes[sc.STEP_DECODE_TOKENS]) for s in steps] == [
        (6, 0),
        (0, 1),
        (3, 1),
    ]

    request_b = next(s for s in traced_process.spans() if s.attributes.get(sc.REQUEST_ID) == "b")
    assert request_b.event_names() == [
        "queued",
        "scheduled",
        "first_token",
        "preempted",
        "resumed",
        "aborted",
    ]
    assert request_b.attributes[sc.NUM_PREEMPTIONS] == 1
    assert request_b.status_code == 0  # a cancelled request is not the scheduler's failure
    step1, _, step3 = steps
    link_b = (request_b.trace_id, request_b.span_id)
    assert link_b in step1.links and link_b in step3.links
    assert (request_a.trace_id, request_a.span_id) in step1.links


def test_metrics_only_builds_no_spans() -> None:
    registry = create_registry("scheduler")
    telemetry = SchedulerTelemetry(RequestMetrics(registry), SchedulerMetrics(registry, lambda: None))
    telemetry.request_queued(_spec("a", 2))
    source = FakeStepSource(inflight=["a"])
    assert telemetry.step_started(source, StepPlan(1, new_sequences=[_new(1, 2)])) is None
    telemetry.outputs_routed([_token("a")])
    telemetry.request_ended("a", grpc.StatusCode.OK)
    assert _sample_count(registry, "infermesh_queue_time_seconds_count") == 1
    assert _sample_count(registry, "infermesh_requests_total", {"status": "ok"}) == 1
    # Once nothing waits for its first step, steps no longer ask the core which requests they serve.
    source.inflight = None  # type: ignore[assignment]
    assert (
        telemetry.step_started(source, StepPlan(2, running_sequences=[RunningSequence(1, [], 2, 1)])) is None
    )


def test_no_telemetry_object_when_tracing_and_metrics_are_off() -> None:
    shutdown_tracing()
    # The engine loop then skips every hook: the step path does no telemetry work at all.
    assert build_scheduler_telemetry(None, lambda: None) is None


def test_load_gauges_are_read_on_the_event_loop() -> None:
    async def scrape_from_another_thread() -> dict[str, float]:
        registry = create_registry("scheduler")
        load = LoadSnapshot(
            num_waiting=3, num_running=2, num_preempted=0, total_blocks=10, free_blocks=4, cached_blocks=2,
            prefix_cache_queries=64, prefix_cache_hits=16, num_waiting_tokens=0, num_preemptions=5,
        )  # fmt: skip
        seen_threads: list[int] = []

        class FakeScheduler:
            def load(self) -> LoadSnapshot:
                seen_threads.append(threading.get_ident())
                return load

        telemetry = build_scheduler_telemetry(registry, lambda: FakeScheduler())
        assert telemetry is not None
        names = ("infermesh_requests_running", "infermesh_requests_waiting", "infermesh_kv_cache_usage_ratio",
                 "infermesh_prefix_cache_hits_total", "infermesh_preemptions_total")  # fmt: skip
        values = await asyncio.to_thread(lambda: {n: registry.get_sample_value(n) for n in names})
        assert seen_threads == [threading.get_ident()] * len(names)  # each read ran on the loop's thread
        return values

    values = asyncio.run(scrape_from_another_thread())
    assert values == {
        "infermesh_requests_running": 2,
        "infermesh_requests_waiting": 3,
        "infermesh_kv_cache_usage_ratio": 0.4,
        "infermesh_prefix_cache_hits_total": 16,
        "infermesh_preemptions_total": 5,
    }
