"""The scheduler core: admits requests, plans each engine step, applies its sampled tokens.

Pure Python, no I/O: the gRPC server calls add_request / abort_request from its handlers and
runs schedule() -> worker -> update() in its step loop. With max_inflight_plans = 1 schedule() and
update() alternate; with K > 1 up to K plans are outstanding (one per pipeline stage) and their
update() calls come in plan order. A sequence in an outstanding plan is not scheduled again or
preempted until that plan's update(): its next token is not known before then.

This class is the policy: who runs, in which order, within which budgets, and whom to preempt.
Which blocks a sequence holds, and the arithmetic behind "does it fit", is KVManager's.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.cost_model import StepCostModel
from infermesh_scheduler.core.invariants import check_invariants
from infermesh_scheduler.core.kv_manager import KVManager
from infermesh_scheduler.core.load import LoadSnapshot
from infermesh_scheduler.core.outstanding_plans import OutstandingPlans
from infermesh_scheduler.core.request import AdmissionError, FinishReason, RequestOutput, RequestSpec
from infermesh_scheduler.core.request_table import RequestTable
from infermesh_scheduler.core.sequence import RequestState, SeqStatus, Sequence
from infermesh_scheduler.core.step_budget import StepBudget, prefill_chunk_limit
from infermesh_scheduler.core.step_plan import SampledToken, StepPlan
from infermesh_scheduler.core.step_results import apply_step_results
from infermesh_scheduler.core.waiting_order import WaitingQueue


def _rank_key(seq: Sequence) -> tuple[int, int, int]:
    return seq.rank


class Scheduler:
    def __init__(
        self,
        config: SchedulerCoreConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config.validate()
        self.config = config
        self._clock = clock
        self.kv = KVManager(config)
        target_s = config.target_step_time_ms / 1000.0
        self._cost = StepCostModel(
            fixed_s=target_s / 2, per_token_s=target_s / 2 / config.max_tokens_per_step
        )
        self._table = RequestTable(config, self._cost, clock)
        self._requests = self._table.requests
        self._waiting = WaitingQueue(config.policy)
        self._running: list[Sequence] = []  # kept sorted by rank
        self._swapped: list[Sequence] = []  # kept sorted by rank
        self._pending_finished: list[int] = []
        self._served_tokens: dict[str, int] = {}
        self._outstanding = OutstandingPlans(config.max_inflight_plans)
        # Tokens applied since the last plan, told to the ranks that did not sample them (K > 1).
        self._announce: list[SampledToken] = []
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.num_preemptions = 0
        # Requests whose sequences the latest schedule() preempted (read by tracing).
        self.preempted_request_ids: list[str] = []

    # ------------------------------------------------------------------ admission and ending
    def add_request(self, spec: RequestSpec) -> list[RequestOutput]:
        """Queue a request; returns the final output of a request dropped to make room (drop_oldest)."""
        self._table.check_new(spec)
        dropped: list[RequestOutput] = []
        victim = self._table.overflow_victim(spec, self._waiting)
        if victim is not None:
            dropped = self._end(victim[0], victim[1])
        self._waiting.add(self._table.admit(spec))
        return dropped

    def has_queue_room(self) -> bool:
        return self._table.num_queued < self.config.max_queue_size

    def abort_request(self, request_id: str) -> list[RequestOutput]:
        """End a live request now (its blocks are freed at once); empty when the id is unknown."""
        req = self._requests.get(request_id)
        return [] if req is None else self._end(req, None)

    def expire_deadlines(self, now: float | None = None) -> list[RequestOutput]:
        """End every request whose timeout ran out by `now` (the scheduler's clock; now by default)."""
        outputs: list[RequestOutput] = []
        for req, error in self._table.expired(self._clock() if now is None else now):
            outputs.extend(self._end(req, error))
        return outputs

    def _end(self, req: RequestState, error: AdmissionError | None) -> list[RequestOutput]:
        rid = req.spec.request_id
        outputs: list[RequestOutput] = []
        for seq in req.sequences:
            if seq.status is not SeqStatus.FINISHED:
                self._release(seq)
                outputs.append(RequestOutput(rid, seq.index, [], [], FinishReason.ABORT, None, error))
        self._table.end(req, error, outputs)
        return outputs

    def _release(self, seq: Sequence) -> None:
        """Take a sequence out of whatever list it is in and give back its blocks."""
        status = seq.status
        if status is SeqStatus.RUNNING:
            self._running.remove(seq)
        elif status is SeqStatus.SWAPPED:
            self._swapped.remove(seq)
        elif status is SeqStatus.WAITING:
            self._waiting.remove(seq)
        self.kv.free(seq)
        if seq.sent:
            self._pending_finished.append(seq.seq_id)
            seq.sent = False
        seq.status = SeqStatus.FINISHED
        seq.request.num_finished += 1

    # ------------------------------------------------------------------ planning
    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._swapped or self._pending_finished)

    def schedule(self) -> StepPlan:
        """Plan the next step: running sequences first (decodes and prefill chunks), then swap-ins,
        then waiting sequences in policy order, within the batch and token budgets."""
        plan = StepPlan(step_id=self._outstanding.next_step_id(), finished_seq_ids=self._pending_finished)
        cfg = self.config
        self.preempted_request_ids = []
        self._pending_finished = []
        step = StepBudget(
            plan,
            cfg.max_tokens_per_step,
            cfg.max_batch_size,
            prefill_chunk_limit(cfg, self._cost, len(self._running)),
        )
        # Sequences preempted by recompute join the waiting queue after this step is planned.
        self._requeue: list[Sequence] = []
        ordered: list[Sequence] = []
        preempted_for_waiting = False
        if self._waiting:
            ordered = self._waiting.ordered(self._clock(), self._cost, self._served_tokens)
            if cfg.enable_preemption and self._running:
                # Swap-ins wait for the next step: a plan never both swaps out and swaps in.
                preempted_for_waiting = self._preempt_for_waiting(ordered[0], step)
        preempted = self._schedule_running(step)
        if self._swapped and not preempted and not preempted_for_waiting:
            self._swap_in(step)
        if ordered and not preempted and step.has_room():
            self._schedule_waiting(ordered, step)
        for seq in self._requeue:
            self._waiting.add(seq)
        return self._register(step)

    def _register(self, step: StepBudget) -> StepPlan:
        plan, scheduled = step.plan, step.scheduled
        if self.config.policy == "fair":
            served = self._served_tokens
            for seq in scheduled:
                client = seq.request.spec.client_id
                served[client] = served.get(client, 0) + seq.num_scheduled_now
        if self.config.max_inflight_plans > 1:
            plan.tokens_in_later_plans = True
            if not plan.is_empty():
                plan.sampled_tokens, self._announce = self._announce, []
        if plan.is_empty() and self._outstanding:
            # Nothing to run: not registered, so it does not hold up the outstanding plans' updates.
            return plan
        self._outstanding.add(plan, scheduled)
        return plan

    def _schedule_running(self, step: StepBudget) -> bool:
        """Decodes and prefill chunks of running sequences in rank order; returns whether any
        running sequence was preempted to make room."""
        kv = self.kv
        threshold = self.config.preemption_threshold
        running = self._running
        preempted = False
        # Several plans in flight: the running set splits across them so every micro-batch has work.
        running_left = -(-len(running) // self.config.max_inflight_plans)
        i = 0
        while i < len(running) and step.budget > 0 and step.batch_left > 0 and running_left > 0:
            seq = running[i]
            i += 1
            if seq.in_flight or seq.held:
                continue
            remaining = len(seq.token_ids) - seq.num_computed_tokens
            n = 1 if remaining <= 1 else step.tokens_for(remaining)  # the common decode first
            if n <= 0:
                continue
            need = kv.growth(seq, n)
            if need > 0 and (kv.num_free - need < threshold or need > kv.num_free):
                room, preempted_any = self._make_room(seq, need, step.plan)
                preempted = preempted or preempted_any
                if not room:
                    if seq.status is SeqStatus.RUNNING:
                        continue  # no preemption allowed: it waits, keeping its blocks
                    break  # it preempted itself, the lowest-ranked: nothing after it
            if need > 0 or seq.cow_block_index >= 0:
                step.plan.copy.extend(kv.grow(seq, need))
            step.emit(seq, n)
            running_left -= 1
        return preempted

    def _swap_in(self, step: StepBudget) -> None:
        kv = self.kv
        threshold = self.config.preemption_threshold
        while self._swapped and step.has_room() and len(self._running) < self.config.max_batch_size:
            seq = self._swapped[0]
            n = step.tokens_for(seq.num_tokens - seq.num_computed_tokens)
            if n <= 0:
                break
            # Its KV comes back whole, so with nothing else running it may use the reserve:
            # a sequence that grew into the reserve before it was swapped out must fit again.
            room = kv.num_free - (threshold if self._running else 0)
            if kv.swap_in_blocks(seq, 1) > room:
                break
            n = min(n, room * kv.block_size - seq.num_computed_tokens)  # shorter chunk if tight
            step.plan.swap_in.extend(kv.swap_in(seq, n))
            seq.status = SeqStatus.RUNNING
            self._swapped.pop(0)
            bisect.insort(self._running, seq, key=_rank_key)
            step.emit(seq, n)

    def _preempt_for_waiting(self, head: Sequence, step: StepBudget) -> bool:
        """Preempt running sequences of a strictly lower class or priority than the first waiting
        one when its first chunk or a batch slot is missing, so a latency-critical or higher-priority
        request does not wait for lower-ranked ones to finish. Equal ranks never preempt each other."""
        kv = self.kv
        hits = kv.match_prefix(head)
        computed = len(hits) * kv.block_size
        remaining = head.num_tokens - computed
        n = 1 if remaining <= 1 else min(remaining, step.chunk_left, self.config.max_tokens_per_step)
        fresh, revived = kv.admission_cost(hits, computed, n)
        need = fresh + revived
        outranks = head.rank[:2]
        preempted = False
        while self._running and (
            kv.num_free - need < self.config.preemption_threshold
            or len(self._running) >= self.config.max_batch_size
        ):
            victim = self._lowest_idle_running()
            if victim is None or victim.rank[:2] <= outranks:
                break
            self._preempt(victim, step.plan)
            preempted = True
        return preempted

    def _schedule_waiting(self, ordered: list[Sequence], step: StepBudget) -> None:
        cfg = self.config
        kv = self.kv
        bs = kv.block_size
        threshold = cfg.preemption_threshold
        # Without preemption nobody can be evicted later, so admission reserves each running
        # sequence's worst case up front: running sequences can then always grow.
        outstanding = 0 if cfg.enable_preemption else sum(kv.future_blocks(s) for s in self._running)
        admitted = 0
        for seq in ordered:
            # Running sequences skipped this step (no chunk budget, no block) still hold a slot.
            if not step.has_room() or len(self._running) >= cfg.max_batch_size:
                break
            if self._swapped and seq.rank > self._swapped[0].rank:
                break  # swapped-out work comes back before lower-ranked new work takes its blocks
            hits = kv.match_prefix(seq)
            computed = len(hits) * bs
            remaining = seq.num_tokens - computed
            n = step.tokens_for(remaining)
            if n <= 0:
                break
            need_now, revived = kv.admission_cost(hits, computed, n)
            later = 0 if cfg.enable_preemption else kv.blocks_after_admission(seq, computed + n)
            room = kv.num_free - revived - outstanding - later - threshold
            if need_now > room:
                # With preemption a shorter first chunk may fit; without it, `later` already
                # holds the rest of the request, so a shorter chunk would not help.
                if not cfg.enable_preemption or remaining <= 1 or room <= 0:
                    break  # head-of-line: nobody behind it jumps the queue
                n = min(n, room * bs)
            outstanding += later
            kv.allocate(seq, hits, n)
            seq.status = SeqStatus.RUNNING
            if kv.prefix_cache_enabled:
                self.prefix_cache_queries += seq.num_tokens
                self.prefix_cache_hits += computed
            self._table.mark_started(seq.request, computed, seq.num_prompt_tokens)
            bisect.insort(self._running, seq, key=_rank_key)
            step.emit(seq, n)
            admitted += 1
        self._waiting.take_front(ordered, admitted)

    # ------------------------------------------------------------------ preemption
    def _make_room(self, seq: Sequence, need: int, plan: StepPlan) -> tuple[bool, bool]:
        """Free blocks for seq by preempting lower-ranked running sequences.

        Returns (room found, anything preempted). seq itself is preempted when it is the
        lowest-ranked and the pool cannot hold its growth.
        """
        threshold = self.config.preemption_threshold
        preempted = False
        while True:
            free = self.kv.num_free
            if free - need >= threshold:
                return True, preempted
            if not self.config.enable_preemption:
                return free >= need, preempted
            victim = self._lowest_idle_running()
            if victim is None:
                return free >= need, preempted
            if victim is not seq:
                self._preempt(victim, plan)
                preempted = True
                continue
            if free >= need:
                return True, preempted  # the reserve exists for exactly this: a running sequence's growth
            self._preempt(seq, plan)
            return False, True

    def _lowest_idle_running(self) -> Sequence | None:
        """The lowest-ranked running sequence not in an outstanding plan (those cannot be preempted:
        their blocks are being written and their next token is not known yet) nor migrating out."""
        for seq in reversed(self._running):
            if not seq.in_flight and not seq.migrating:
                return seq
        return None

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        """Take seq off the device: by swap when enabled and CPU blocks suffice, else by recompute."""
        self._running.remove(seq)
        self.num_preemptions += 1
        self.preempted_request_ids.append(seq.request.spec.request_id)
        if self.kv.can_swap_out(seq):
            plan.swap_out.extend(self.kv.swap_out(seq))
            seq.status = SeqStatus.SWAPPED
            seq.preempted = True
            bisect.insort(self._swapped, seq, key=_rank_key)
            was_sent, seq.sent = seq.sent, False
        else:
            self.kv.free(seq)
            was_sent = seq.reset_to_waiting()
            self._requeue.append(seq)
        if was_sent:
            # The worker forgets it; it comes back as a NewSequence (swap-in or recompute).
            plan.finished_seq_ids.append(seq.seq_id)

    # ------------------------------------------------------------------ results
    def update(self, plan: StepPlan, sampled: list[SampledToken]) -> list[RequestOutput]:
        """Apply a step's results: advance computed tokens, append sampled tokens, finish
        sequences that stopped (their full blocks stay in the prefix cache)."""
        scheduled = self._outstanding.pop(plan)
        if scheduled is None:
            return []
        return apply_step_results(self, scheduled, sampled)

    def _insert_running(self, seq: Sequence) -> None:
        bisect.insort(self._running, seq, key=_rank_key)

    def _fork(self, parent: Sequence) -> None:
        """Start completions 1..n-1: they share the prompt's blocks and copy the last one lazily."""
        req = parent.request
        req.forked = True
        prompt_len = parent.num_prompt_tokens
        for index in range(1, req.spec.sampling.n):
            child = self._table.new_sequence(req, index, parent.token_ids[:prompt_len], prompt_len)
            self.kv.fork(parent, child)
            child.status = SeqStatus.RUNNING
            bisect.insort(self._running, child, key=_rank_key)

    # ------------------------------------------------------------------ recovery, load, checks
    def reset_worker_state(self) -> None:
        """The workers lost all KV: every sequence on the device or in CPU memory goes back to
        waiting and is recomputed from its prompt plus the tokens it already generated."""
        for seq in self._running + self._swapped:
            seq.reset_to_waiting()
            self._waiting.add(seq)
        self._running = []
        self._swapped = []
        self.kv.reset()
        self._pending_finished = []
        self._outstanding.reset()
        self._announce = []

    def inflight_request_ids(self) -> list[str]:
        """Requests the latest outstanding plan serves (between schedule() and update()), one per sequence."""
        return self._outstanding.latest_request_ids()

    @property
    def num_outstanding_plans(self) -> int:
        """Plans scheduled whose update() has not been applied yet."""
        return len(self._outstanding)

    def record_step_time(self, plan: StepPlan, seconds: float) -> None:
        """Feed the step-time model (dynamic chunking, edf/lrs estimates) with a measured step."""
        self._cost.observe(plan.num_scheduled_tokens(), seconds)

    def load(self) -> LoadSnapshot:
        kv = self.kv
        queued = self._table.num_queued
        held = kv.num_blocks - kv.num_free
        # What the queue will ask for soon: every waiting sequence's tokens (prompts and preempted
        # ones recomputing) and the swapped sequences' blocks, which must come back to resume.
        wanted = sum(kv.blocks_for(s.num_tokens) for s in self._waiting)
        wanted += sum(len(s.cpu_block_ids) for s in self._swapped)
        return LoadSnapshot(
            num_waiting=queued,
            num_running=len(self._running),
            num_preempted=len(self._waiting) - queued + len(self._swapped),
            total_blocks=kv.num_blocks,
            free_blocks=kv.num_free - kv.num_evictable,
            cached_blocks=kv.num_evictable,
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            num_waiting_tokens=self._waiting.num_tokens,
            num_preemptions=self.num_preemptions,
            cached_prefix_hashes=kv.root_hashes(),
            kv_cache_usage_ratio_projected=(held + wanted) / kv.num_blocks if kv.num_blocks else 0.0,
        )

    @property
    def cost_model(self) -> StepCostModel:
        return self._cost

    def check_invariants(self) -> None:
        """Assert the bookkeeping is consistent (tests call this after every step)."""
        check_invariants(self)
