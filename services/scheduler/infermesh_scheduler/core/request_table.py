"""The live requests: ids, admission numbers, the queue count max_queue_size bounds, deadlines,
and the outputs that end a request early."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.cost_model import StepCostModel
from infermesh_scheduler.core.errors import EndReason, InvalidRequestError, QueueFullError
from infermesh_scheduler.core.request import (
    AdmissionError,
    FinishReason,
    PriorityClass,
    RequestOutput,
    RequestSpec,
    Usage,
)
from infermesh_scheduler.core.request_check import RequestLimits, check_request
from infermesh_scheduler.core.sequence import RequestState, Sequence


class RequestTable:
    def __init__(
        self,
        config: SchedulerCoreConfig,
        cost: StepCostModel,
        clock: Callable[[], float],
    ) -> None:
        self._cfg = config
        self._cost = cost
        self._clock = clock
        self.requests: dict[str, RequestState] = {}
        self.num_queued = 0  # requests not yet started: what max_queue_size bounds
        self._next_seq_id = 1
        self._next_arrival = 0
        # (deadline on the scheduler's clock, arrival number, request) of requests given a timeout.
        self._deadlines: list[tuple[float, int, RequestState]] = []

    # ------------------------------------------------------------------ admission
    def check_new(self, spec: RequestSpec) -> None:
        if spec.request_id in self.requests:
            raise InvalidRequestError(
                f"request_id {spec.request_id!r} is already in use by a live request", "request_id"
            )
        check_request(spec, RequestLimits.of(self._cfg))

    def overflow_victim(
        self, spec: RequestSpec, waiting: Iterable[Sequence]
    ) -> tuple[RequestState, AdmissionError] | None:
        """None when the queue has room; else the request drop_oldest ends for spec (or raise)."""
        cfg = self._cfg
        if self.num_queued < cfg.max_queue_size:
            return None
        policy = cfg.queue_overflow_policy
        where = (
            f"the scheduler queue is full ({self.num_queued} waiting requests, "
            f"max_queue_size={cfg.max_queue_size})"
        )
        if policy == "block":
            raise QueueFullError(
                policy, f"{where}; queue_overflow_policy=block: wait for room or retry later"
            )
        if policy == "drop_newest":
            raise QueueFullError(policy, f"{where}; queue_overflow_policy=drop_newest rejected this request")
        oldest = min((s for s in waiting if not s.request.started), key=lambda s: s.request.arrival_seq)
        error = AdmissionError(
            EndReason.DROPPED_FOR_NEWER,
            f"{where}; queue_overflow_policy=drop_oldest dropped this request, the oldest waiting one, "
            f"for request {spec.request_id!r}",
        )
        return oldest.request, error

    def admit(self, spec: RequestSpec) -> Sequence:
        """Register a checked request; returns its first sequence, to be queued."""
        cfg = self._cfg
        arrival = self._next_arrival
        self._next_arrival += 1
        # None means the client left it unset (proto `optional int32 priority`).
        priority = cfg.default_priority if spec.priority is None else spec.priority
        if spec.timeout_s is not None:
            deadline_mono = spec.arrival_time + spec.timeout_s
        else:
            expected = self._cost.service_time(len(spec.prompt_token_ids), spec.sampling.max_tokens)
            deadline_mono = spec.arrival_time + max(cfg.min_deadline_s, cfg.deadline_multiplier * expected)
        class_rank = int(spec.priority_class) if spec.priority_class else int(PriorityClass.THROUGHPUT)
        req = RequestState(
            spec=spec,
            arrival_seq=arrival,
            priority=priority,
            class_rank=class_rank,
            deadline_mono=deadline_mono,
        )
        sampling = spec.sampling
        stop = set(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stop.update(cfg.eos_token_ids)
        req.stop_ids = frozenset(stop)
        req.max_total_tokens = min(len(spec.prompt_token_ids) + sampling.max_tokens, cfg.max_model_len)
        req.wants_logprobs = sampling.logprobs > 0
        tokens = list(spec.prompt_token_ids) + list(spec.resumed_output_token_ids)
        seq = self.new_sequence(req, 0, tokens, len(spec.prompt_token_ids))
        self.requests[spec.request_id] = req
        self.num_queued += 1
        if spec.timeout_s is not None:
            heapq.heappush(self._deadlines, (deadline_mono, arrival, req))
        return seq

    def new_sequence(self, req: RequestState, index: int, tokens: list[int], num_prompt: int) -> Sequence:
        seq = Sequence(
            seq_id=self._next_seq_id,
            request=req,
            index=index,
            token_ids=tokens,
            num_prompt_tokens=num_prompt,
            rank=(req.class_rank, -req.priority, req.arrival_seq),
        )
        self._next_seq_id += 1
        req.sequences.append(seq)
        return seq

    def mark_started(self, req: RequestState, computed: int, num_prompt_tokens: int) -> None:
        """The request's first sequence got blocks: it no longer counts against the queue."""
        if not req.started:
            req.started = True
            req.cached_prompt_tokens = min(computed, num_prompt_tokens)
            self.num_queued -= 1

    # ------------------------------------------------------------------ ending
    def expired(self, now: float) -> list[tuple[RequestState, AdmissionError]]:
        """Live requests whose timeout ran out by `now` (the scheduler's clock), with the error
        that ends them; looks only at the deadlines that passed."""
        out: list[tuple[RequestState, AdmissionError]] = []
        heap = self._deadlines
        while heap and heap[0][0] < now:
            deadline, _, req = heapq.heappop(heap)
            if self.requests.get(req.spec.request_id) is not req:
                continue  # already ended
            error = AdmissionError(
                EndReason.DEADLINE,
                f"request {req.spec.request_id!r} passed its deadline: it did not finish within its "
                f"timeout of {req.spec.timeout_s:.3f} s (ran out {now - deadline:.3f} s ago)",
            )
            out.append((req, error))
        return out

    def end(self, req: RequestState, error: AdmissionError | None, outputs: list[RequestOutput]) -> None:
        """Forget an ended request. outputs already end its live sequences; this adds the
        completions never started (n > 1 before the fork) and the usage on the last output."""
        rid = req.spec.request_id
        if not req.forked:
            for index in range(1, req.spec.sampling.n):
                outputs.append(RequestOutput(rid, index, [], [], FinishReason.ABORT, None, error))
        if not req.started:
            self.num_queued -= 1
            req.started = True
        del self.requests[rid]
        if outputs:
            outputs[-1].usage = usage(req)

    def finish(self, req: RequestState, last: RequestOutput) -> None:
        """Every completion of req finished normally: its last output carries the usage."""
        last.usage = usage(req)
        del self.requests[req.spec.request_id]


def usage(req: RequestState) -> Usage:
    return Usage(
        prompt_tokens=len(req.spec.prompt_token_ids),
        completion_tokens=sum(s.num_output_tokens for s in req.sequences),
        cached_prompt_tokens=req.cached_prompt_tokens,
    )
