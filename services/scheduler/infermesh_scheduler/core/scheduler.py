"""The scheduler core: admits requests, plans each engine step, applies its sampled tokens.

Pure Python, no I/O: the gRPC server calls add_request / abort_request from its handlers and
runs schedule() -> worker -> update() in its step loop. With max_inflight_plans = 1 schedule() and
update() alternate; with K > 1 up to K plans are outstanding (one per pipeline stage) and their
update() calls come in plan order. A sequence in an outstanding plan is not scheduled again or
preempted until that plan's update(): its next token is not known before then.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import deque
from collections.abc import Callable

from infermesh_scheduler.core.block_pool import BlockPool
from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.cost_model import StepCostModel
from infermesh_scheduler.core.cpu_block_pool import CpuBlockPool
from infermesh_scheduler.core.errors import InvalidRequestError, QueueFullError
from infermesh_scheduler.core.load import LoadSnapshot
from infermesh_scheduler.core.request import (
    AdmissionError,
    FinishReason,
    PriorityClass,
    RequestOutput,
    RequestSpec,
    SamplingOptions,
    Usage,
)
from infermesh_scheduler.core.sequence import RequestState, SeqStatus, Sequence
from infermesh_scheduler.core.step_plan import (
    BlockMove,
    NewSequence,
    RunningSequence,
    SampledToken,
    StepPlan,
)
from infermesh_scheduler.core.waiting_order import ORDERS


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _rank_key(seq: Sequence) -> tuple[int, int, int]:
    return seq.rank


class Scheduler:
    def __init__(
        self,
        config: SchedulerCoreConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        config.validate()
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._bs = config.block_size
        cache_blocks = config.prefix_cache_capacity // config.block_size if config.enable_prefix_cache else 0
        self._pool = BlockPool(config.num_blocks, config.enable_prefix_cache, cache_blocks)
        self._cpu = CpuBlockPool(config.num_cpu_blocks if config.enable_swap else 0)
        target_s = config.target_step_time_ms / 1000.0
        self._cost = StepCostModel(
            fixed_s=target_s / 2, per_token_s=target_s / 2 / config.max_tokens_per_step
        )
        self._order = ORDERS[config.policy]
        self._eos = frozenset(config.eos_token_ids)
        self._requests: dict[str, RequestState] = {}
        self._waiting: list[Sequence] = []
        self._running: list[Sequence] = []  # kept sorted by rank
        self._swapped: list[Sequence] = []  # kept sorted by rank
        self._num_queued = 0  # requests not yet started: what max_queue_size bounds
        self._pending_finished: list[int] = []
        self._served_tokens: dict[str, int] = {}
        self._next_seq_id = 1
        self._next_arrival = 0
        self._step_id = 0
        # (step_id, sequences it schedules) of every plan whose update() is still due, oldest first.
        self._outstanding: deque[tuple[int, list[Sequence]]] = deque()
        # Plans numbered below this were outstanding at reset_worker_state(): their results are void.
        self._void_before = 0
        # Tokens applied since the last plan, told to the ranks that did not sample them (K > 1).
        self._announce: list[SampledToken] = []
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.num_preemptions = 0
        # Requests whose sequences the latest schedule() preempted (read by tracing).
        self.preempted_request_ids: list[str] = []

    # ------------------------------------------------------------------ admission
    def add_request(self, spec: RequestSpec) -> list[RequestOutput]:
        """Queue a request; returns the final output of a request dropped to make room (drop_oldest)."""
        self._validate(spec)
        cfg = self.config
        dropped: list[RequestOutput] = []
        if self._num_queued >= cfg.max_queue_size:
            policy = cfg.queue_overflow_policy
            where = (
                f"the scheduler queue is full ({self._num_queued} waiting requests, "
                f"max_queue_size={cfg.max_queue_size})"
            )
            if policy == "block":
                raise QueueFullError(
                    policy, f"{where}; queue_overflow_policy=block: wait for room or retry later"
                )
            if policy == "drop_newest":
                raise QueueFullError(
                    policy, f"{where}; queue_overflow_policy=drop_newest rejected this request"
                )
            oldest = min(
                (s for s in self._waiting if not s.request.started), key=lambda s: s.request.arrival_seq
            )
            error = AdmissionError(
                "RESOURCE_EXHAUSTED",
                f"{where}; queue_overflow_policy=drop_oldest dropped this request, the oldest waiting one, "
                f"for request {spec.request_id!r}",
            )
            dropped = self._end_request(oldest.request, error)
        self._admit(spec)
        return dropped

    def has_queue_room(self) -> bool:
        return self._num_queued < self.config.max_queue_size

    def _validate(self, spec: RequestSpec) -> None:
        cfg = self.config
        s = spec.sampling
        rid = spec.request_id
        prompt_len = len(spec.prompt_token_ids)
        if rid in self._requests:
            raise InvalidRequestError(f"request_id {rid!r} is already in use by a live request")
        if prompt_len == 0:
            raise InvalidRequestError(f"request {rid!r}: prompt_token_ids is empty")
        if s.max_tokens < 1:
            raise InvalidRequestError(f"request {rid!r}: max_tokens must be >= 1, got {s.max_tokens}")
        if s.n < 1:
            raise InvalidRequestError(f"request {rid!r}: n must be >= 1, got {s.n}")
        if s.n > 1 and not cfg.enable_cow:
            raise InvalidRequestError(
                f"request {rid!r}: n={s.n} needs completions to share the prompt's KV blocks "
                "copy-on-write; start the scheduler with enable_cow=true or send n=1"
            )
        if s.n > 1 and spec.resumed_output_token_ids:
            raise InvalidRequestError(
                f"request {rid!r}: resumed_output_token_ids cannot be combined with n > 1"
            )
        if cfg.vocab_size:
            for tokens, what in (
                (spec.prompt_token_ids, "prompt"),
                (spec.resumed_output_token_ids, "resumed output"),
            ):
                bad = [t for t in tokens if t < 0 or t >= cfg.vocab_size]
                if bad:
                    raise InvalidRequestError(
                        f"request {rid!r}: {what} token id {bad[0]} is outside the vocabulary "
                        f"[0, {cfg.vocab_size})"
                    )
        if prompt_len + s.max_tokens > cfg.max_model_len:
            raise InvalidRequestError(
                f"request {rid!r}: prompt ({prompt_len} tokens) + max_tokens ({s.max_tokens}) = "
                f"{prompt_len + s.max_tokens} exceeds max_model_len {cfg.max_model_len}; "
                "shorten the prompt or lower max_tokens"
            )
        if len(spec.resumed_output_token_ids) >= s.max_tokens:
            raise InvalidRequestError(
                f"request {rid!r}: {len(spec.resumed_output_token_ids)} resumed output tokens already reach "
                f"max_tokens {s.max_tokens}"
            )
        worst = _cdiv(prompt_len + s.max_tokens, self._bs)
        if cfg.enable_preemption:
            # A preempted child recomputes without sharing, so count every completion in full;
            # the top-ranked request may use the preemption_threshold reserve.
            need, room = s.n * worst, cfg.num_blocks
        else:
            # Nothing can be evicted: the whole request must fit beside the reserve.
            need, room = (
                self._request_worst_blocks(prompt_len, s.max_tokens, s.n),
                (cfg.num_blocks - cfg.preemption_threshold),
            )
        if need > room:
            raise InvalidRequestError(
                f"request {rid!r}: prompt + max_tokens (x n={s.n}) need up to {need} KV blocks of "
                f"{self._bs} tokens but only {room} can ever be given to one request; lower max_tokens or n"
            )

    def _request_worst_blocks(self, prompt_len: int, max_tokens: int, n: int) -> int:
        worst = _cdiv(prompt_len + max_tokens, self._bs)
        # Children share the blocks before the one holding the last prompt token.
        return worst + (n - 1) * (worst - (prompt_len - 1) // self._bs)

    def _admit(self, spec: RequestSpec) -> None:
        cfg = self.config
        arrival = self._next_arrival
        self._next_arrival += 1
        # None means the client left it unset (proto `optional int32 priority`).
        priority = cfg.default_priority if spec.priority is None else spec.priority
        now = self._clock()
        if spec.deadline is not None:
            deadline_mono = spec.deadline - self._wall_clock() + now
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
        tokens = list(spec.prompt_token_ids) + list(spec.resumed_output_token_ids)
        seq = self._new_sequence(req, 0, tokens, len(spec.prompt_token_ids))
        self._requests[spec.request_id] = req
        self._waiting.append(seq)
        self._num_queued += 1

    def _new_sequence(self, req: RequestState, index: int, tokens: list[int], num_prompt: int) -> Sequence:
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

    # ------------------------------------------------------------------ ending requests
    def abort_request(self, request_id: str) -> list[RequestOutput]:
        """End a live request now (its blocks are freed at once); empty when the id is unknown."""
        req = self._requests.get(request_id)
        if req is None:
            return []
        return self._end_request(req, None)

    def expire_deadlines(self, now_wall: float) -> list[RequestOutput]:
        """End every request whose absolute deadline (time.time() seconds) has passed."""
        outputs: list[RequestOutput] = []
        for req in list(self._requests.values()):
            deadline = req.spec.deadline
            if deadline is not None and deadline < now_wall:
                error = AdmissionError(
                    "DEADLINE_EXCEEDED",
                    f"request {req.spec.request_id!r} passed its deadline {now_wall - deadline:.3f} s ago "
                    "before it finished",
                )
                outputs.extend(self._end_request(req, error))
        return outputs

    def _end_request(self, req: RequestState, error: AdmissionError | None) -> list[RequestOutput]:
        rid = req.spec.request_id
        outputs: list[RequestOutput] = []
        for seq in req.sequences:
            if seq.status is not SeqStatus.FINISHED:
                self._release(seq)
                outputs.append(RequestOutput(rid, seq.index, [], [], FinishReason.ABORT, None, error))
        if not req.forked:
            for index in range(1, req.spec.sampling.n):
                outputs.append(RequestOutput(rid, index, [], [], FinishReason.ABORT, None, error))
        if not req.started:
            self._num_queued -= 1
            req.started = True
        del self._requests[rid]
        if outputs:
            outputs[-1].usage = self._usage(req)
        return outputs

    def _release(self, seq: Sequence) -> None:
        """Take a sequence out of whatever list it is in and give back its blocks."""
        status = seq.status
        if status is SeqStatus.RUNNING:
            self._pool.free(seq.block_ids)
            self._running.remove(seq)
        elif status is SeqStatus.SWAPPED:
            self._cpu.free(seq.cpu_block_ids)
            self._swapped.remove(seq)
        elif status is SeqStatus.WAITING:
            self._waiting.remove(seq)
        seq.block_ids = []
        seq.cpu_block_ids = []
        seq.new_block_ids = []
        if seq.sent:
            self._pending_finished.append(seq.seq_id)
            seq.sent = False
        seq.status = SeqStatus.FINISHED
        seq.request.num_finished += 1

    def _usage(self, req: RequestState) -> Usage:
        return Usage(
            prompt_tokens=len(req.spec.prompt_token_ids),
            completion_tokens=sum(s.num_output_tokens for s in req.sequences),
            cached_prompt_tokens=req.cached_prompt_tokens,
        )

    # ------------------------------------------------------------------ planning
    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._swapped or self._pending_finished)

    def schedule(self) -> StepPlan:
        """Plan the next step: running sequences first (decodes and prefill chunks), then swap-ins,
        then waiting sequences in policy order, within the batch and token budgets."""
        cfg = self.config
        max_inflight = cfg.max_inflight_plans
        if len(self._outstanding) >= max_inflight:
            if max_inflight == 1:
                raise RuntimeError(
                    f"schedule() called again before update() of step {self._outstanding[0][0]}"
                )
            raise RuntimeError(
                f"schedule() called with {len(self._outstanding)} plans outstanding "
                f"(max_inflight_plans={max_inflight}); apply update() of step {self._outstanding[0][0]} first"
            )
        bs = self._bs
        pool = self._pool
        self._step_id += 1
        self.preempted_request_ids = []
        plan = StepPlan(step_id=self._step_id, finished_seq_ids=self._pending_finished)
        self._pending_finished = []
        scheduled: list[Sequence] = []
        budget = cfg.max_tokens_per_step
        batch_left = cfg.max_batch_size
        chunk_left = self._prefill_chunk_limit()
        threshold = cfg.preemption_threshold
        preempted = False
        new_sequences = plan.new_sequences
        running_sequences = plan.running_sequences

        ordered: list[Sequence] = []
        preempted_for_waiting = False
        if self._waiting:
            ordered = self._order(self._waiting, self._clock(), self._cost, self._served_tokens)
            if cfg.enable_preemption and self._running:
                # Swap-ins wait for the next step: a plan never both swaps out and swaps in.
                preempted_for_waiting = self._preempt_for_waiting(ordered[0], chunk_left, plan)

        running = self._running
        # Several plans in flight: the running set splits across them so every micro-batch has work.
        running_left = _cdiv(len(running), max_inflight)
        i = 0
        while i < len(running) and budget > 0 and batch_left > 0 and running_left > 0:
            seq = running[i]
            if seq.in_flight:
                i += 1
                continue
            remaining = seq.num_tokens - seq.num_computed_tokens
            if remaining > 1:
                n = min(remaining, budget, chunk_left)
                if n <= 0:
                    i += 1
                    continue
            else:
                n = 1
            need = _cdiv(seq.num_computed_tokens + n, bs) - len(seq.block_ids)
            if seq.cow_block_index >= 0:
                need += 1
            if need > 0 and pool.num_free - need < threshold or need > pool.num_free:
                room, preempted_any = self._make_room(seq, need, plan)
                preempted = preempted or preempted_any
                if not room:
                    if seq.status is SeqStatus.RUNNING:
                        i += 1  # no preemption allowed: it waits, keeping its blocks
                        continue
                    break  # it preempted itself, the lowest-ranked: nothing after it
            if seq.cow_block_index >= 0:
                self._copy_on_write(seq, plan)
                need -= 1
            if need > 0:
                fresh = pool.allocate(need)
                seq.block_ids.extend(fresh)
                if seq.sent:
                    seq.new_block_ids.extend(fresh)
            self._emit(seq, n, new_sequences, running_sequences)
            scheduled.append(seq)
            budget -= n
            batch_left -= 1
            running_left -= 1
            if remaining > 1:
                chunk_left -= n
            i += 1

        if self._swapped and not preempted and not preempted_for_waiting:
            budget, batch_left, chunk_left = self._swap_in(plan, scheduled, budget, batch_left, chunk_left)

        if self._waiting and not preempted and budget > 0 and batch_left > 0:
            self._schedule_waiting(ordered, plan, scheduled, budget, batch_left, chunk_left)

        if cfg.policy == "fair":
            served = self._served_tokens
            for seq in scheduled:
                client = seq.request.spec.client_id
                served[client] = served.get(client, 0) + seq.num_scheduled_now
        if max_inflight > 1:
            plan.tokens_in_later_plans = True
            if not plan.is_empty():
                plan.sampled_tokens, self._announce = self._announce, []
        if plan.is_empty() and self._outstanding:
            # Nothing to run: not registered, so it does not hold up the outstanding plans' updates.
            return plan
        for seq in scheduled:
            seq.in_flight = True
        self._outstanding.append((plan.step_id, scheduled))
        return plan

    def _emit(
        self,
        seq: Sequence,
        n: int,
        new_sequences: list[NewSequence],
        running_sequences: list[RunningSequence],
    ) -> None:
        seq.num_scheduled_now = n
        if seq.sent:
            running_sequences.append(
                RunningSequence(seq.seq_id, seq.new_block_ids, seq.num_computed_tokens, n)
            )
            seq.new_block_ids = []
        else:
            new_sequences.append(
                NewSequence(
                    seq_id=seq.seq_id,
                    token_ids=list(seq.token_ids),
                    sampling=_completion_sampling(seq),
                    block_ids=list(seq.block_ids),
                    num_computed_tokens=seq.num_computed_tokens,
                    num_scheduled_tokens=n,
                    num_output_tokens=seq.num_output_tokens,
                )
            )
            seq.sent = True
            seq.new_block_ids = []

    def _prefill_chunk_limit(self) -> int:
        """Prefill tokens this step may carry (all prefilling sequences together)."""
        cfg = self.config
        if cfg.chunked_prefill == "fixed":
            return cfg.chunk_size
        if not self._cost.fitted:
            tokens = cfg.chunk_size
        else:
            # Decodes ride along in the same step, so they take part of the target time.
            tokens = self._cost.tokens_within(cfg.target_step_time_ms / 1000.0) - len(self._running)
        return max(cfg.min_chunk_size, min(cfg.max_chunk_size, tokens))

    def _make_room(self, seq: Sequence, need: int, plan: StepPlan) -> tuple[bool, bool]:
        """Free blocks for seq by preempting lower-ranked running sequences.

        Returns (room found, anything preempted). seq itself is preempted when it is the
        lowest-ranked and the pool cannot hold its growth.
        """
        pool = self._pool
        threshold = self.config.preemption_threshold
        preempted = False
        while True:
            free = pool.num_free
            if free - need >= threshold:
                return True, preempted
            if not self.config.enable_preemption:
                return free >= need, preempted
            victim = self._lowest_idle_running()
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
        their blocks are being written and their next token is not known yet)."""
        for seq in reversed(self._running):
            if not seq.in_flight:
                return seq
        return None

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        """Take seq off the device: by swap when enabled and CPU blocks suffice, else by recompute."""
        self._running.remove(seq)
        self.num_preemptions += 1
        self.preempted_request_ids.append(seq.request.spec.request_id)
        pool = self._pool
        can_swap = (
            self.config.enable_swap
            and seq.sent
            and seq.cow_block_index < 0
            and self._cpu.num_free >= len(seq.block_ids)
        )
        if can_swap:
            cpu_blocks = self._cpu.allocate(len(seq.block_ids))
            plan.swap_out.extend(BlockMove(d, c) for d, c in zip(seq.block_ids, cpu_blocks, strict=True))
            seq.cpu_block_ids = cpu_blocks
            seq.status = SeqStatus.SWAPPED
            bisect.insort(self._swapped, seq, key=_rank_key)
        else:
            seq.num_computed_tokens = 0
            seq.num_cached_blocks = 0
            seq.cow_block_index = -1
            seq.status = SeqStatus.WAITING
            self._waiting.append(seq)
        pool.free(seq.block_ids)
        seq.block_ids = []
        seq.new_block_ids = []
        seq.preempted = True
        if seq.sent:
            # The worker forgets it; it comes back as a NewSequence (swap-in or recompute).
            plan.finished_seq_ids.append(seq.seq_id)
            seq.sent = False

    def _copy_on_write(self, seq: Sequence, plan: StepPlan) -> None:
        """Give a forked child its own copy of the shared block it is about to write into."""
        pool = self._pool
        index = seq.cow_block_index
        shared = seq.block_ids[index]
        seq.cow_block_index = -1
        if pool.refcount[shared] == 1 and pool.block_keys[shared] is None:
            return  # sole holder of an uncached block: write in place, keep the block reserved for it
        (own,) = pool.allocate(1)
        plan.copy.append(BlockMove(shared, own))
        seq.block_ids[index] = own
        pool.free([shared])

    def _swap_in(
        self, plan: StepPlan, scheduled: list[Sequence], budget: int, batch_left: int, chunk_left: int
    ) -> tuple[int, int, int]:
        pool = self._pool
        bs = self._bs
        threshold = self.config.preemption_threshold
        max_running = self.config.max_batch_size
        while self._swapped and budget > 0 and batch_left > 0 and len(self._running) < max_running:
            seq = self._swapped[0]
            remaining = seq.num_tokens - seq.num_computed_tokens
            n = 1 if remaining <= 1 else min(remaining, budget, chunk_left)
            if n <= 0:
                break
            computed = seq.num_computed_tokens
            # Its KV comes back whole, so with nothing else running it may use the reserve:
            # a sequence that grew into the reserve before it was swapped out must fit again.
            room = pool.num_free - (threshold if self._running else 0)
            if max(len(seq.cpu_block_ids), _cdiv(computed + 1, bs)) > room:
                break
            n = min(n, room * bs - computed)  # a shorter prefill chunk if the pool is tight
            total = max(len(seq.cpu_block_ids), _cdiv(computed + n, bs))
            device = pool.allocate(total)
            plan.swap_in.extend(
                BlockMove(c, d)
                for c, d in zip(seq.cpu_block_ids, device[: len(seq.cpu_block_ids)], strict=True)
            )
            self._cpu.free(seq.cpu_block_ids)
            seq.cpu_block_ids = []
            seq.block_ids = device
            seq.status = SeqStatus.RUNNING
            self._swapped.pop(0)
            bisect.insort(self._running, seq, key=_rank_key)
            self._emit(seq, n, plan.new_sequences, plan.running_sequences)
            scheduled.append(seq)
            budget -= n
            batch_left -= 1
            if remaining > 1:
                chunk_left -= n
        return budget, batch_left, chunk_left

    def _preempt_for_waiting(self, head: Sequence, chunk_limit: int, plan: StepPlan) -> bool:
        """Preempt running sequences of a strictly lower class or priority than the first waiting
        one when its first chunk or a batch slot is missing, so a latency-critical or higher-priority request
        does not wait for lower-ranked ones to finish. Equal ranks never preempt each other."""
        pool = self._pool
        hits = self._match_prefix(head)
        computed = len(hits) * self._bs
        remaining = head.num_tokens - computed
        n = 1 if remaining <= 1 else min(remaining, chunk_limit, self.config.max_tokens_per_step)
        need = _cdiv(computed + n, self._bs) - len(hits) + sum(1 for b in hits if pool.refcount[b] == 0)
        outranks = head.rank[:2]
        preempted = False
        while self._running and (
            pool.num_free - need < self.config.preemption_threshold
            or len(self._running) >= self.config.max_batch_size
        ):
            victim = self._lowest_idle_running()
            if victim is None or victim.rank[:2] <= outranks:
                break
            self._preempt(victim, plan)
            preempted = True
        return preempted

    def _schedule_waiting(
        self,
        ordered: list[Sequence],
        plan: StepPlan,
        scheduled: list[Sequence],
        budget: int,
        batch_left: int,
        chunk_left: int,
    ) -> None:
        cfg = self.config
        pool = self._pool
        bs = self._bs
        threshold = cfg.preemption_threshold
        # Without preemption nobody can be evicted later, so admission reserves each running
        # sequence's worst case up front: running sequences can then always grow.
        outstanding = 0 if cfg.enable_preemption else sum(self._future_blocks(s) for s in self._running)
        admitted = False
        for seq in ordered:
            # Running sequences skipped this step (no chunk budget, no block) still hold a slot.
            if budget <= 0 or batch_left <= 0 or len(self._running) >= cfg.max_batch_size:
                break
            if self._swapped and seq.rank > self._swapped[0].rank:
                break  # swapped-out work comes back before lower-ranked new work takes its blocks
            hits = self._match_prefix(seq)
            computed = len(hits) * bs
            remaining = seq.num_tokens - computed
            n = 1 if remaining <= 1 else min(remaining, budget, chunk_left)
            if n <= 0:
                break
            total = _cdiv(computed + n, bs)
            need_now = total - len(hits)
            revived = sum(1 for b in hits if pool.refcount[b] == 0)
            later = 0
            if not cfg.enable_preemption:
                later = self._worst_blocks(seq) - total
                if seq.request.spec.sampling.n > 1 and not seq.request.forked:
                    later += self._children_worst_blocks(seq.request)
            room = pool.num_free - revived - outstanding - later - threshold
            if need_now > room:
                # With preemption a shorter first chunk may fit; without it, `later` already
                # holds the rest of the request, so a shorter chunk would not help.
                if not cfg.enable_preemption or remaining <= 1 or room <= 0:
                    break  # head-of-line: nobody behind it jumps the queue
                n = min(n, room * bs)
                total = _cdiv(computed + n, bs)
                need_now = total - len(hits)
            outstanding += later
            for b in hits:
                pool.share(b)
            seq.block_ids = hits + pool.allocate(need_now)
            seq.num_computed_tokens = computed
            seq.num_cached_blocks = len(hits)
            seq.status = SeqStatus.RUNNING
            req = seq.request
            if self._pool.enable_cache:
                self.prefix_cache_queries += seq.num_tokens
                self.prefix_cache_hits += computed
            if not req.started:
                req.started = True
                req.cached_prompt_tokens = min(computed, seq.num_prompt_tokens)
                self._num_queued -= 1
            bisect.insort(self._running, seq, key=_rank_key)
            self._emit(seq, n, plan.new_sequences, plan.running_sequences)
            scheduled.append(seq)
            admitted = True
            budget -= n
            batch_left -= 1
            if remaining > 1:
                chunk_left -= n
        if admitted:
            self._waiting = [s for s in self._waiting if s.status is SeqStatus.WAITING]

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's leading full blocks; never the block of its last token,
        which must be computed so the worker can sample after it."""
        if not self._pool.enable_cache:
            return []
        max_blocks = (seq.num_tokens - 1) // self._bs
        if max_blocks <= 0:
            return []
        keys = seq.full_block_keys(self._bs, max_blocks)
        hits: list[int] = []
        lookup = self._pool.lookup
        for i in range(max_blocks):
            block = lookup(keys[i])
            if block is None:
                break
            hits.append(block)
        return hits

    def _worst_blocks(self, seq: Sequence) -> int:
        s = seq.request.spec
        return _cdiv(
            min(len(s.prompt_token_ids) + s.sampling.max_tokens, self.config.max_model_len), self._bs
        )

    def _children_worst_blocks(self, req: RequestState) -> int:
        s = req.spec
        prompt_len = len(s.prompt_token_ids)
        child = _cdiv(prompt_len + s.sampling.max_tokens, self._bs) - _cdiv(prompt_len, self._bs) + 1
        return (s.sampling.n - 1) * child

    def _future_blocks(self, seq: Sequence) -> int:
        """Blocks seq may still take before it finishes (its children's too, before the fork)."""
        future = max(0, self._worst_blocks(seq) - len(seq.block_ids))
        if seq.cow_block_index >= 0:
            future += 1
        req = seq.request
        if req.spec.sampling.n > 1 and not req.forked and seq.index == 0:
            future += self._children_worst_blocks(req)
        return future

    # ------------------------------------------------------------------ results
    def update(self, plan: StepPlan, sampled: list[SampledToken]) -> list[RequestOutput]:
        """Apply a step's results: advance computed tokens, append sampled tokens, finish
        sequences that stopped (their full blocks stay in the prefix cache)."""
        outstanding = self._outstanding
        step = plan.step_id
        if not outstanding or step != outstanding[0][0]:
            if step <= self._step_id and (
                not outstanding  # an applied plan or one from before reset_worker_state()
                or step < self._void_before
                or (plan.is_empty() and all(step != sid for sid, _ in outstanding))  # never registered
            ):
                return []
            due = outstanding[0][0] if outstanding else self._step_id
            raise ValueError(
                f"update() for step {step} but step {due} is in flight (updates come in plan order)"
            )
        _, scheduled = outstanding.popleft()
        for seq in scheduled:
            seq.in_flight = False
        announce = self.config.max_inflight_plans > 1
        by_seq = {t.seq_id: t for t in sampled}
        outputs: list[RequestOutput] = []
        bs = self._bs
        cache = self._pool.enable_cache
        eos = self._eos
        max_model_len = self.config.max_model_len
        for seq in scheduled:
            if seq.status is not SeqStatus.RUNNING:
                continue  # aborted or expired while the step ran
            seq.num_computed_tokens += seq.num_scheduled_now
            if seq.num_computed_tokens < seq.num_tokens:
                if cache and seq.num_computed_tokens // bs > seq.num_cached_blocks:
                    self._cache_full_blocks(seq)
                continue
            token = by_seq.get(seq.seq_id)
            if token is None:
                raise RuntimeError(
                    f"the worker returned no token for sequence {seq.seq_id}, "
                    "which reached the end of its tokens"
                )
            tid = token.token_id
            seq.token_ids.append(tid)
            if cache and seq.num_computed_tokens // bs > seq.num_cached_blocks:
                self._cache_full_blocks(seq)
            req = seq.request
            sampling = req.spec.sampling
            reason: FinishReason | None = None
            if (tid in eos and not sampling.ignore_eos) or tid in sampling.stop_token_ids:
                reason = FinishReason.STOP
            elif seq.num_output_tokens >= sampling.max_tokens or seq.num_tokens >= max_model_len:
                reason = FinishReason.LENGTH
            out = RequestOutput(
                req.spec.request_id,
                seq.index,
                [tid],
                [token.logprob] if sampling.logprobs > 0 else [],
                reason,
            )
            outputs.append(out)
            if sampling.n > 1 and not req.forked:
                self._fork(seq)
            if announce and reason is None:
                self._announce.append(token)
            if reason is not None:
                self._release(seq)
                if req.num_finished == sampling.n:
                    out.usage = self._usage(req)
                    del self._requests[req.spec.request_id]
        return outputs

    def _cache_full_blocks(self, seq: Sequence) -> None:
        full = seq.num_computed_tokens // self._bs
        keys = seq.full_block_keys(self._bs, full)
        hashes = seq.block_hashes
        blocks = seq.block_ids
        for i in range(seq.num_cached_blocks, full):
            if i != seq.cow_block_index:
                self._pool.cache_block(blocks[i], keys[i], hashes[i])
        seq.num_cached_blocks = full

    def _fork(self, parent: Sequence) -> None:
        """Start completions 1..n-1: they share the prompt's blocks and copy the last one lazily."""
        req = parent.request
        req.forked = True
        prompt_len = parent.num_prompt_tokens
        cow_index = (prompt_len - 1) // self._bs
        shared = parent.block_ids[: cow_index + 1]
        for index in range(1, req.spec.sampling.n):
            child = self._new_sequence(req, index, parent.token_ids[:prompt_len], prompt_len)
            for b in shared:
                self._pool.share(b)
            child.block_ids = list(shared)
            child.num_computed_tokens = prompt_len - 1
            child.cow_block_index = cow_index
            child.num_cached_blocks = cow_index
            child.status = SeqStatus.RUNNING
            bisect.insort(self._running, child, key=_rank_key)

    # ------------------------------------------------------------------ recovery, load, checks
    def reset_worker_state(self) -> None:
        """The workers lost all KV: every sequence on the device or in CPU memory goes back to
        waiting and is recomputed from its prompt plus the tokens it already generated."""
        for seq in self._running + self._swapped:
            seq.status = SeqStatus.WAITING
            seq.block_ids = []
            seq.cpu_block_ids = []
            seq.new_block_ids = []
            seq.num_computed_tokens = 0
            seq.num_cached_blocks = 0
            seq.cow_block_index = -1
            seq.sent = False
            seq.preempted = True
            self._waiting.append(seq)
        self._running = []
        self._swapped = []
        self._pool.reset()
        self._cpu.reset()
        self._pending_finished = []
        for _, scheduled in self._outstanding:
            for seq in scheduled:
                seq.in_flight = False
        self._outstanding.clear()
        self._void_before = self._step_id + 1
        self._announce = []

    def inflight_request_ids(self) -> list[str]:
        """Requests the latest outstanding plan serves (between schedule() and update()), one per sequence."""
        if not self._outstanding:
            return []
        return [seq.request.spec.request_id for seq in self._outstanding[-1][1]]

    @property
    def num_outstanding_plans(self) -> int:
        """Plans scheduled whose update() has not been applied yet."""
        return len(self._outstanding)

    def record_step_time(self, plan: StepPlan, seconds: float) -> None:
        """Feed the step-time model (dynamic chunking, edf/lrs estimates) with a measured step."""
        self._cost.observe(plan.num_scheduled_tokens(), seconds)

    def load(self) -> LoadSnapshot:
        pool = self._pool
        return LoadSnapshot(
            num_waiting=self._num_queued,
            num_running=len(self._running),
            num_preempted=len(self._waiting) - self._num_queued + len(self._swapped),
            total_blocks=pool.num_blocks,
            free_blocks=pool.num_free - pool.num_evictable,
            cached_blocks=pool.num_evictable,
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            num_waiting_tokens=sum(s.num_tokens - s.num_computed_tokens for s in self._waiting),
            num_preemptions=self.num_preemptions,
            cached_prefix_hashes=pool.root_hashes(),
        )

    @property
    def cost_model(self) -> StepCostModel:
        return self._cost

    def check_invariants(self) -> None:
        """Assert the bookkeeping is consistent (tests call this after every step)."""
        holders: dict[int, int] = {}
        seen: set[int] = set()
        for seq in self._running:
            assert seq.status is SeqStatus.RUNNING, f"seq {seq.seq_id} in running with status {seq.status}"
            assert seq.seq_id not in seen
            seen.add(seq.seq_id)
            assert len(seq.block_ids) * self._bs >= seq.num_computed_tokens, (
                f"seq {seq.seq_id} blocks too few"
            )
            assert len(set(seq.block_ids)) == len(seq.block_ids), f"seq {seq.seq_id} holds a block twice"
            for b in seq.block_ids:
                holders[b] = holders.get(b, 0) + 1
        cpu_held: list[int] = []
        for seq in self._swapped:
            assert seq.status is SeqStatus.SWAPPED and not seq.block_ids and not seq.sent
            assert seq.seq_id not in seen
            seen.add(seq.seq_id)
            cpu_held.extend(seq.cpu_block_ids)
        for seq in self._waiting:
            assert seq.status is SeqStatus.WAITING and not seq.block_ids and not seq.cpu_block_ids
            assert seq.seq_id not in seen and not seq.sent
            seen.add(seq.seq_id)
        assert [s.rank for s in self._running] == sorted(s.rank for s in self._running), (
            "running not in rank order"
        )
        self._pool.check_invariants(holders)
        self._cpu.check_invariants(cpu_held)
        queued = sum(1 for r in self._requests.values() if not r.started)
        assert queued == self._num_queued, f"queue count {self._num_queued} but {queued} unstarted requests"
        live = {
            s.seq_id
            for r in self._requests.values()
            for s in r.sequences
            if s.status is not SeqStatus.FINISHED
        }
        assert live == seen, "live sequences and scheduler lists disagree"
        assert len(self._outstanding) <= self.config.max_inflight_plans, "too many plans outstanding"
        in_plans: set[int] = set()
        for _, scheduled in self._outstanding:
            for seq in scheduled:
                assert seq.seq_id not in in_plans, f"seq {seq.seq_id} is in two outstanding plans"
                in_plans.add(seq.seq_id)
                assert seq.in_flight, f"seq {seq.seq_id} in an outstanding plan is not marked in flight"
                assert seq.status in (SeqStatus.RUNNING, SeqStatus.FINISHED), (
                    f"seq {seq.seq_id} in flight is {seq.status}"
                )
        flagged = {s.seq_id for r in self._requests.values() for s in r.sequences if s.in_flight}
        assert flagged <= in_plans, f"seqs {flagged - in_plans} marked in flight but in no outstanding plan"


def _completion_sampling(seq: Sequence) -> SamplingOptions:
    """The sampling options completion `seq.index` runs with.

    The worker draws a seeded request's noise from (seed, output position), so completions 1..n-1
    of one seeded request need seeds of their own or they would all repeat completion 0.
    """
    sampling = seq.request.spec.sampling
    if seq.index == 0 or sampling.seed is None:
        return sampling
    return dataclasses.replace(sampling, seed=(sampling.seed + seq.index) % (1 << 64))
