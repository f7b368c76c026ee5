"""Spans, span events and Prometheus metrics of the scheduler's requests and engine steps.

The engine loop and the servicer call these hooks; with tracing off and no metrics the
service holds no SchedulerTelemetry at all, so the step loop does no telemetry work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from infermesh.v1 import scheduler_pb2
from infermesh_shared.telemetry import (
    CacheConfig,
    RequestMetrics,
    SchedulerMetrics,
    get_tracer,
    start_step_span,
    tracing_enabled,
)
from infermesh_shared.telemetry import semconv as sc
from opentelemetry.trace import Span, StatusCode
from prometheus_client import CollectorRegistry

from infermesh_scheduler.core.request import RequestOutput, RequestSpec, Usage
from infermesh_scheduler.core.scheduler import Scheduler
from infermesh_scheduler.core.step_plan import StepPlan
from infermesh_scheduler.load_metrics import load_reader

# Codes that mean the service failed the request, not that the caller asked for something wrong.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


def build_scheduler_telemetry(
    registry: CollectorRegistry | None,
    current_scheduler: Callable[[], Scheduler | None],
    cache_config: CacheConfig | None = None,
    model_name: str = "",
) -> SchedulerTelemetry | None:
    """The service's telemetry: metrics into `registry` (None: no /metrics), spans when tracing is on.

    None when both are off. Call on the event loop that runs the scheduler: /metrics scrapes read
    the scheduler's load there.
    """
    if registry is None and not tracing_enabled():
        return None
    request_metrics = scheduler_metrics = None
    if registry is not None:
        request_metrics = RequestMetrics(registry)
        scheduler_metrics = SchedulerMetrics(
            registry, load_reader(asyncio.get_running_loop(), current_scheduler), cache_config
        )
    return SchedulerTelemetry(request_metrics, scheduler_metrics, model_name)


class StepSource(Protocol):
    """What the telemetry reads from the core scheduler after schedule()."""

    # Requests whose sequences the latest schedule() preempted, one entry per sequence.
    preempted_request_ids: list[str]

    def inflight_request_ids(self) -> list[str]:
        """Requests the step in flight serves, one entry per scheduled sequence."""
        ...


@dataclass(slots=True)
class _LiveRequest:
    span: Span | None
    # time.monotonic() seconds.
    arrival: float
    num_prompt_tokens: int
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    num_output_tokens: int = 0
    preempted: bool = False
    num_preemptions: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    # Completion 0's, the `finished_reason` label of the request's success count.
    first_finish_reason: str = "stop"
    usage: Usage | None = None


class SchedulerTelemetry:
    """Keeps one span per live request and turns engine events into span events and metrics."""

    def __init__(
        self,
        request_metrics: RequestMetrics | None,
        scheduler_metrics: SchedulerMetrics | None,
        model_name: str = "",
    ) -> None:
        self._model_name = model_name
        self._requests = request_metrics
        self._scheduler = scheduler_metrics
        self._tracing = tracing_enabled()
        self._tracer = get_tracer("infermesh.scheduler")
        self._live: dict[str, _LiveRequest] = {}
        # Queued requests not scheduled yet: their first step ends their queue time.
        self._unscheduled: set[str] = set()

    def migration_ended(self, outcome: str, reason: str, downtime_s: float, num_bytes: int) -> None:
        """A live migration this replica drove ended (reason "" when it migrated)."""
        if self._scheduler is None:
            return
        self._scheduler.migrations.labels(outcome=outcome, reason=reason).inc()
        self._scheduler.migration_bytes.inc(num_bytes)
        if outcome == "migrated":
            self._scheduler.migration_downtime.observe(downtime_s)

    # ----- request life -------------------------------------------------------------------
    def request_queued(self, spec: RequestSpec) -> None:
        """The core accepted `spec`; call in the Submit handler so its span is the parent."""
        span = None
        if self._tracing:
            sampling = spec.sampling
            span = self._tracer.start_span(
                sc.SPAN_SCHEDULER_REQUEST,
                attributes={
                    sc.REQUEST_ID: spec.request_id,
                    sc.GEN_AI_OPERATION_NAME: sc.OPERATION_TEXT_COMPLETION,
                    sc.GEN_AI_PROVIDER_NAME: sc.PROVIDER_INFERMESH,
                    sc.GEN_AI_REQUEST_MAX_TOKENS: sampling.max_tokens,
                    sc.GEN_AI_REQUEST_TEMPERATURE: sampling.temperature,
                    sc.GEN_AI_REQUEST_TOP_P: sampling.top_p,
                    sc.GEN_AI_REQUEST_TOP_K: sampling.top_k,
                    sc.GEN_AI_REQUEST_CHOICE_COUNT: sampling.n,
                    sc.GEN_AI_REQUEST_MODEL: self._model_name,
                    sc.GEN_AI_RESPONSE_MODEL: self._model_name,
                    # Not gen_ai.usage.*: the frontend's request span carries the usage, and UIs
                    # that sum usage over a trace's spans would count it twice.
                    sc.PROMPT_TOKENS: len(spec.prompt_token_ids),
                    sc.REQUEST_PRIORITY: spec.priority,
                    sc.REQUEST_PRIORITY_CLASS: int(spec.priority_class),
                    sc.REQUEST_CLIENT_ID: spec.client_id,
                },
            )
            span.add_event(sc.EVENT_QUEUED)
        self._live[spec.request_id] = _LiveRequest(span, spec.arrival_time, len(spec.prompt_token_ids))
        self._unscheduled.add(spec.request_id)

    def request_described(self, request_id: str, operation: int) -> None:
        """Names the request span's operation as the client asked (a SubmitRequest.operation)."""
        live = self._live.get(request_id)
        if live is not None and live.span is not None and operation == scheduler_pb2.GEN_AI_OPERATION_CHAT:
            live.span.set_attribute(sc.GEN_AI_OPERATION_NAME, sc.OPERATION_CHAT)

    def request_rejected(self, code: grpc.StatusCode) -> None:
        """A Submit refused before its request was queued."""
        if self._requests is not None:
            self._requests.request_ended(code)

    def request_ended(self, request_id: str, code: grpc.StatusCode, message: str = "") -> None:
        """The Submit stream of a queued request ended with `code` (OK when it ran to its end)."""
        live = self._live.pop(request_id, None)
        self._unscheduled.discard(request_id)
        now = time.monotonic()
        if self._requests is not None:
            if live is not None and code is grpc.StatusCode.OK:
                self._requests.request_finished(
                    live.num_prompt_tokens,
                    live.num_output_tokens,
                    live.first_finish_reason,
                    now - live.arrival,
                )
            else:
                self._requests.request_ended(code)
        if live is None:
            return
        if self._scheduler is not None and code is grpc.StatusCode.OK:
            self._scheduler.request_phases_ended(live.scheduled_at, live.first_token_at, live.last_token_at)
        span = live.span
        if span is None:
            return
        attributes: dict[str, object] = {
            sc.OUTPUT_TOKENS: live.usage.completion_tokens if live.usage else live.num_output_tokens,
            sc.NUM_PREEMPTIONS: live.num_preemptions,
            sc.E2E_LATENCY_MS: (now - live.arrival) * 1000.0,
            sc.RPC_GRPC_STATUS_CODE: code.value[0],
        }
        if live.finish_reasons:
            attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = live.finish_reasons
        if live.usage is not None:
            attributes[sc.PREFIX_CACHE_HIT_TOKENS] = live.usage.cached_prompt_tokens
        if live.scheduled_at is not None:
            attributes[sc.QUEUE_TIME_MS] = (live.scheduled_at - live.arrival) * 1000.0
        if live.first_token_at is not None:
            attributes[sc.TTFT_MS] = (live.first_token_at - live.arrival) * 1000.0
        span.set_attributes(attributes)
        if code is grpc.StatusCode.OK:
            span.add_event(sc.EVENT_FINISHED, {sc.GEN_AI_RESPONSE_FINISH_REASONS: live.finish_reasons})
        else:
            span.add_event(
                sc.EVENT_ABORTED, {sc.RPC_GRPC_STATUS_CODE: code.value[0], sc.ERROR_MESSAGE: message}
            )
            if code in _SERVER_ERROR_CODES:
                span.set_status(StatusCode.ERROR, message or code.name)
        span.end()

    # ----- steps --------------------------------------------------------------------------
    def step_started(self, source: StepSource, plan: StepPlan) -> Span | None:
        """Records what schedule() decided; returns the step's span (None when not traced)."""
        now = time.monotonic()
        batch_size = len(plan.new_sequences) + len(plan.running_sequences)
        if self._scheduler is not None:
            self._scheduler.engine_steps.inc()
            self._scheduler.step_batch_size.observe(batch_size)
        for request_id in source.preempted_request_ids:
            live = self._live.get(request_id)
            if live is not None:
                live.preempted = True
                live.num_preemptions += 1
                if live.span is not None:
                    live.span.add_event(sc.EVENT_PREEMPTED, {sc.STEP_ID: plan.step_id})
        if not (self._tracing or self._unscheduled or source.preempted_request_ids):
            return None
        served: dict[str, _LiveRequest] = {}
        for request_id in source.inflight_request_ids():
            live = self._live.get(request_id)
            if live is None or request_id in served:
                continue
            served[request_id] = live
            if request_id in self._unscheduled:
                self._unscheduled.discard(request_id)
                live.scheduled_at = now
                if self._scheduler is not None:
                    self._scheduler.queue_time.observe(now - live.arrival)
                if live.span is not None:
                    live.span.add_event(
                        sc.EVENT_SCHEDULED,
                        {sc.STEP_ID: plan.step_id, sc.QUEUE_TIME_MS: (now - live.arrival) * 1000.0},
                    )
            elif live.preempted:
                live.preempted = False
                if live.span is not None:
                    live.span.add_event(sc.EVENT_RESUMED, {sc.STEP_ID: plan.step_id})
        if not self._tracing:
            return None
        oldest_first = sorted(
            (live for live in served.values() if live.span is not None), key=lambda r: r.arrival
        )
        prefill, decode = _prefill_and_decode_tokens(plan)
        return start_step_span(
            self._tracer,
            [live.span.get_span_context() for live in oldest_first],
            {
                sc.STEP_ID: plan.step_id,
                sc.STEP_BATCH_SIZE: batch_size,
                sc.STEP_PREFILL_TOKENS: prefill,
                sc.STEP_DECODE_TOKENS: decode,
                sc.STEP_NEW_SEQUENCES: len(plan.new_sequences),
                sc.STEP_FINISHED_SEQUENCES: len(plan.finished_seq_ids),
                sc.STEP_SWAP_OUT_BLOCKS: len(plan.swap_out),
                sc.STEP_SWAP_IN_BLOCKS: len(plan.swap_in),
            },
        )

    def step_ended(self, span: Span | None, seconds: float, error: str | None = None) -> None:
        """The step's tokens came back (or it failed with `error`)."""
        if self._scheduler is not None and error is None:
            self._scheduler.step_seconds.observe(seconds)
        if span is not None:
            if error is not None:
                span.set_status(StatusCode.ERROR, error)
            span.end()

    def outputs_routed(self, outputs: Iterable[RequestOutput]) -> None:
        """Tokens (and ends) the core produced, as they are handed to the request streams."""
        now = time.monotonic()
        metrics = self._requests
        for output in outputs:
            live = self._live.get(output.request_id)
            if live is None:
                continue
            if output.new_token_ids:
                count = len(output.new_token_ids)
                if live.first_token_at is None:
                    live.first_token_at = now
                    if metrics is not None:
                        metrics.time_to_first_token.observe(now - live.arrival)
                    if live.span is not None:
                        live.span.add_event(sc.EVENT_FIRST_TOKEN, {sc.TTFT_MS: (now - live.arrival) * 1000.0})
                elif metrics is not None and output.index == 0 and live.last_token_at is not None:
                    metrics.inter_token_latency.observe((now - live.last_token_at) / count)
                if output.index == 0:
                    live.last_token_at = now
                live.num_output_tokens += count
            if output.finish_reason is not None:
                live.finish_reasons.append(output.finish_reason.value)
                if output.index == 0:
                    live.first_finish_reason = output.finish_reason.value
            if output.usage is not None:
                live.usage = output.usage


def _prefill_and_decode_tokens(plan: StepPlan) -> tuple[int, int]:
    """Tokens of the step's prompt (or recompute) chunks, and of its one-token decodes.

    A running sequence computing one token counts as a decode: the plan cannot tell it from a
    prefill whose last chunk is a single token.
    """
    prefill = decode = 0
    for new in plan.new_sequences:
        if new.num_output_tokens > 0 and len(new.token_ids) - new.num_computed_tokens == 1:
            decode += new.num_scheduled_tokens
        else:
            prefill += new.num_scheduled_tokens
    for running in plan.running_sequences:
        if running.num_scheduled_tokens == 1:
            decode += 1
        else:
            prefill += running.num_scheduled_tokens
    return prefill, decode
