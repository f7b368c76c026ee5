"""SchedulerTelemetry against the real core: preemption under a small block pool shows up as
preempted/resumed events on exactly the requests the core preempted."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from infermesh_scheduler.request_telemetry import SchedulerTelemetry
from infermesh_shared.telemetry import (
    RequestMetrics,
    SchedulerMetrics,
    activate_span,
    create_registry,
    flush_tracing,
)
from infermesh_shared.telemetry import semconv as sc

from tests.scheduler_core.builders import make_pair, make_spec
from tests.telemetry.otlp_collector import OtlpCollector

WORKLOAD = [(f"r{i}", [(i * 13 + j) % 47 + 1 for j in range(5 + 3 * i)], 12 + i) for i in range(6)]


@pytest.mark.parametrize("swap", [False, True], ids=["recompute", "swap"])
def test_preemptions_become_span_events(traced_process: OtlpCollector, swap: bool) -> None:
    overrides = {"enable_swap": True, "num_cpu_blocks": 64} if swap else {}
    sched, worker = make_pair(block_size=4, max_model_len=64, num_blocks=10, **overrides)
    registry = create_registry("scheduler")
    telemetry = SchedulerTelemetry(RequestMetrics(registry), SchedulerMetrics(registry, lambda: None))
    for rid, prompt, max_tokens in WORKLOAD:
        spec = make_spec(rid, prompt, max_tokens)
        sched.add_request(spec)
        telemetry.request_queued(spec)
    preempted = Counter()
    steps = 0
    for _ in range(2000):
        if not sched.has_work():
            break
        plan = sched.schedule()
        preempted.update(sched.preempted_request_ids)
        span = telemetry.step_started(sched, plan)
        with activate_span(span):
            sampled = worker.execute(plan)
        outputs = sched.update(plan, sampled)
        telemetry.outputs_routed(outputs)
        telemetry.step_ended(span, 0.001)
        # A step that runs no sequence (only frees or swaps blocks) serves no request: no span.
        assert (span is None) == (not plan.new_sequences and not plan.running_sequences)
        steps += span is not None
        for output in outputs:
            if output.usage is not None:
                telemetry.request_ended(output.request_id, grpc.StatusCode.OK)
    assert not sched.has_work()
    assert sum(preempted.values()) == sched.load().num_preemptions > 0

    flush_tracing()
    spans = traced_process.wait_for(
        lambda spans: (
            sum(s.name == sc.SPAN_SCHEDULER_REQUEST for s in spans) == len(WORKLOAD)
            and sum(s.name == sc.SPAN_ENGINE_STEP for s in spans) == steps
        )
    )
    by_id = {s.attributes[sc.REQUEST_ID]: s for s in spans if s.name == sc.SPAN_SCHEDULER_REQUEST}
    for rid, _, max_tokens in WORKLOAD:
        names = by_id[rid].event_names()
        assert names[:2] == ["queued", "scheduled"] and names[-1] == "finished", (rid, names)
        # A request may be preempted before its first token (in the middle of its prefill).
        assert names.count("first_token") == 1
        cycles = [n for n in names[2:-1] if n != "first_token"]
        # Every preemption is followed by a resume before the next one.
        assert cycles == ["preempted", "resumed"] * preempted[rid], (rid, names)
        assert by_id[rid].attributes[sc.NUM_PREEMPTIONS] == preempted[rid]
        assert by_id[rid].attributes[sc.OUTPUT_TOKENS] == max_tokens
    assert registry.get_sample_value("infermesh_requests_total", {"status": "ok"}) == len(WORKLOAD)
    request_span_ids = {(s.trace_id, s.span_id) for s in by_id.values()}
    for step in (s for s in spans if s.name == sc.SPAN_ENGINE_STEP):
        assert step.links and set(step.links) <= request_span_ids
        assert (step.trace_id, step.parent_span_id) in step.links
