"""Plain mirrors of worker.proto's StepPlan: what one engine step runs.

The worker applies a plan in this order: forget finished_seq_ids, swap_out, swap_in, copy, then
run the forward pass. The scheduler never puts a swap_out and a swap_in in the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from infermesh_scheduler.core.request import SamplingOptions


@dataclass(slots=True)
class NewSequence:
    """A sequence the worker has not seen (or forgot), sent in full."""

    seq_id: int
    # Every token known so far: prompt, then tokens generated before a preemption or swap.
    token_ids: list[int]
    sampling: SamplingOptions
    block_ids: list[int]
    # Leading tokens whose KV is already in block_ids (prefix cache, swap-in, fork).
    num_computed_tokens: int
    num_scheduled_tokens: int
    # Tokens already generated before this sequence was (re)sent; seeds sampling positions.
    num_output_tokens: int


@dataclass(slots=True)
class RunningSequence:
    """A sequence the worker already holds: only blocks appended since the last step."""

    seq_id: int
    # A shared empty tuple when no block was appended (the common decode step).
    new_block_ids: Sequence[int]
    num_computed_tokens: int
    num_scheduled_tokens: int


@dataclass(slots=True)
class BlockMove:
    src: int
    dst: int


@dataclass(slots=True)
class StepPlan:
    step_id: int
    new_sequences: list[NewSequence] = field(default_factory=list)
    running_sequences: list[RunningSequence] = field(default_factory=list)
    finished_seq_ids: list[int] = field(default_factory=list)
    swap_out: list[BlockMove] = field(default_factory=list)
    swap_in: list[BlockMove] = field(default_factory=list)
    copy: list[BlockMove] = field(default_factory=list)
    # Tokens sampled since the previous plan, for the ranks that did not sample them; set (with
    # tokens_in_later_plans) only when several plans may be in flight. Not work: is_empty ignores it.
    sampled_tokens: list[SampledToken] = field(default_factory=list)
    # The workers learn this step's tokens from sampled_tokens of later plans, not a broadcast.
    tokens_in_later_plans: bool = False

    def is_empty(self) -> bool:
        """True when the plan asks the worker to do nothing at all."""
        return not (
            self.new_sequences
            or self.running_sequences
            or self.finished_seq_ids
            or self.swap_out
            or self.swap_in
            or self.copy
        )

    def num_scheduled_tokens(self) -> int:
        """Tokens computed by this plan's forward pass."""
        total = 0
        for new in self.new_sequences:
            total += new.num_scheduled_tokens
        for run in self.running_sequences:
            total += run.num_scheduled_tokens
        return total


@dataclass(slots=True)
class SampledToken:
    seq_id: int
    token_id: int
    logprob: float = 0.0
    # The most likely alternatives (ids, logprobs) when the sequence asked for them.
    top: tuple[tuple[int, ...], tuple[float, ...]] | None = None
