"""One step being planned: what is left of its budgets, the plan it fills, who is in it."""

from __future__ import annotations

import dataclasses

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.cost_model import StepCostModel
from infermesh_scheduler.core.request import SamplingOptions
from infermesh_scheduler.core.sequence import Sequence
from infermesh_scheduler.core.step_plan import NewSequence, RunningSequence, StepPlan

_NO_BLOCKS: tuple[int, ...] = ()


class StepBudget:
    __slots__ = ("plan", "budget", "batch_left", "chunk_left", "scheduled")

    def __init__(self, plan: StepPlan, max_tokens: int, max_batch: int, chunk_limit: int) -> None:
        self.plan = plan
        self.budget = max_tokens  # tokens this step's forward pass may compute
        self.batch_left = max_batch  # sequences it may still take
        self.chunk_left = chunk_limit  # prefill tokens (all prefilling sequences together)
        self.scheduled: list[Sequence] = []

    def has_room(self) -> bool:
        return self.budget > 0 and self.batch_left > 0

    def tokens_for(self, remaining: int) -> int:
        """Tokens a sequence with `remaining` uncomputed tokens gets: one to decode, else the
        largest prefill chunk the budgets allow (0: none)."""
        if remaining <= 1:
            return 1
        return min(remaining, self.budget, self.chunk_left)

    def emit(self, seq: Sequence, n: int) -> None:
        """Put seq in the plan with n tokens to compute, and charge the budgets."""
        seq.num_scheduled_now = n
        computed = seq.num_computed_tokens
        if seq.sent:
            new_blocks = seq.new_block_ids
            if new_blocks:
                seq.new_block_ids = []
            else:
                new_blocks = _NO_BLOCKS  # most decodes: no list allocated per sequence per step
            self.plan.running_sequences.append(RunningSequence(seq.seq_id, new_blocks, computed, n))
        else:
            self.plan.new_sequences.append(
                NewSequence(
                    seq_id=seq.seq_id,
                    token_ids=list(seq.token_ids),
                    sampling=completion_sampling(seq),
                    block_ids=list(seq.block_ids),
                    num_computed_tokens=computed,
                    num_scheduled_tokens=n,
                    num_output_tokens=seq.num_output_tokens,
                )
            )
            seq.sent = True
            if seq.new_block_ids:
                seq.new_block_ids = []
        self.scheduled.append(seq)
        self.budget -= n
        self.batch_left -= 1
        if len(seq.token_ids) - computed > 1:
            self.chunk_left -= n


def prefill_chunk_limit(cfg: SchedulerCoreConfig, cost: StepCostModel, num_running: int) -> int:
    """Prefill tokens one step may carry (all prefilling sequences together)."""
    if cfg.chunked_prefill == "fixed":
        return cfg.chunk_size
    if not cost.fitted:
        tokens = cfg.chunk_size
    else:
        # Decodes ride along in the same step, so they take part of the target time.
        tokens = cost.tokens_within(cfg.target_step_time_ms / 1000.0) - num_running
    return max(cfg.min_chunk_size, min(cfg.max_chunk_size, tokens))


def completion_sampling(seq: Sequence) -> SamplingOptions:
    """The sampling options completion `seq.index` runs with.

    The worker draws a seeded request's noise from (seed, output position), so completions 1..n-1
    of one seeded request need seeds of their own or they would all repeat completion 0.
    """
    sampling = seq.request.spec.sampling
    if seq.index == 0 or sampling.seed is None:
        return sampling
    return dataclasses.replace(sampling, seed=(sampling.seed + seq.index) % (1 << 64))
