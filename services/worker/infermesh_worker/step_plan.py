"""A step plan and its result as plain records: what the servicer decodes from worker_pb2 and what
the runner works on. No protobuf, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

BlockMove = tuple[int, int]  # (source block, destination block)


@dataclass(slots=True, frozen=True)
class SamplingSpec:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0  # 0 on the wire means "unset", decoded as 1.0
    min_p: float = 0.0
    seed: int | None = None
    logprobs: int = 0
    top_logprobs: int = 0  # alternatives returned with each logprob
    # Logit adjustments (layers/logits_adjust.py); the defaults ask for none.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class NewSequence:
    """A sequence the worker does not hold yet (first step, or after a preemption/Reset): in full."""

    seq_id: int
    token_ids: list[int]
    block_ids: list[int]
    num_computed_tokens: int
    num_scheduled_tokens: int
    num_output_tokens: int
    sampling: SamplingSpec


@dataclass(slots=True)
class RunningSequence:
    """A sequence the worker holds: only its new blocks and this step's share."""

    seq_id: int
    new_block_ids: list[int]
    num_computed_tokens: int
    num_scheduled_tokens: int


@dataclass(slots=True)
class ToldToken:
    """A token sampled on another rank (pipelined plans), told so this rank's copy catches up."""

    seq_id: int
    token_id: int


@dataclass(slots=True)
class StepPlan:
    step_id: int
    previous_step_id: int = 0
    finished_seq_ids: list[int] = field(default_factory=list)
    swap_out: list[BlockMove] = field(default_factory=list)
    swap_in: list[BlockMove] = field(default_factory=list)
    copy: list[BlockMove] = field(default_factory=list)
    new_sequences: list[NewSequence] = field(default_factory=list)
    running_sequences: list[RunningSequence] = field(default_factory=list)
    sampled_tokens: list[ToldToken] = field(default_factory=list)
    tokens_in_later_plans: bool = False

    def num_scheduled_tokens(self) -> int:
        return sum(s.num_scheduled_tokens for s in self.new_sequences) + sum(
            s.num_scheduled_tokens for s in self.running_sequences
        )


@dataclass(slots=True)
class SampledToken:
    seq_id: int
    token_id: int
    logprob: float
    # (alternative ids, their logprobs), most likely first, when the sequence asked for them.
    top: tuple[list[int], list[float]] | None = None


@dataclass(slots=True)
class StepResult:
    step_id: int
    tokens: list[SampledToken]
    compute_time_us: int
