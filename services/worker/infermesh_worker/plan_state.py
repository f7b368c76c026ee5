"""The worker's per-sequence bookkeeping: checks a step plan against what this rank holds, then
applies its deltas. Pure Python (no torch, no protobuf), so every rule is testable on its own.

A bad plan is refused before anything changes, so state stays consistent, and every rank receiving
the same plan refuses it identically without entering a collective. The checks guard this rank's
memory and tensors (block ids, token ids, lengths, the sampler's value ranges, which are the
scheduler's too: infermesh_shared.sampling_rules); what a request may ask for is the scheduler's
to judge (request_check.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from infermesh_shared.sampling_rules import sampling_violation

from infermesh_worker.errors import FailedPreconditionError, InvalidArgumentError
from infermesh_worker.sequence_state import SequenceState
from infermesh_worker.step_plan import BlockMove, NewSequence, StepPlan


@dataclass(slots=True, frozen=True)
class PlanLimits:
    """What this rank can hold: checked against every plan."""

    num_blocks: int
    num_cpu_blocks: int
    block_size: int
    vocab_size: int
    max_model_len: int


def check_moves(kind: str, moves: Sequence[BlockMove], limits: PlanLimits) -> None:
    src_limit, dst_limit = {
        "swap_out": (limits.num_blocks, limits.num_cpu_blocks),
        "swap_in": (limits.num_cpu_blocks, limits.num_blocks),
        "copy": (limits.num_blocks, limits.num_blocks),
    }[kind]
    if moves and kind != "copy" and limits.num_cpu_blocks == 0:
        raise InvalidArgumentError(f"step plan has {kind} moves but the worker has no CPU swap blocks")
    for src, dst in moves:
        if src >= src_limit or dst >= dst_limit:
            raise InvalidArgumentError(
                f"{kind} move {src}->{dst} is out of range (source blocks: {src_limit}, "
                f"destination blocks: {dst_limit})"
            )


def lacks_next_token(state: SequenceState) -> bool:
    """Every known token is computed: the next one was sampled elsewhere and is not known here yet."""
    return state.num_computed_tokens == len(state.token_ids)


class SequenceTable:
    """The sequences this rank holds, keyed by seq_id."""

    def __init__(self) -> None:
        self.sequences: dict[int, SequenceState] = {}

    def clear(self) -> None:
        self.sequences.clear()

    def validate(self, plan: StepPlan, limits: PlanLimits) -> None:
        check_moves("swap_out", plan.swap_out, limits)
        check_moves("swap_in", plan.swap_in, limits)
        check_moves("copy", plan.copy, limits)
        finished = set(plan.finished_seq_ids)
        told: set[int] = set()
        for token in plan.sampled_tokens:
            if token.token_id >= limits.vocab_size:
                raise InvalidArgumentError(
                    f"sampled token {token.token_id} of sequence {token.seq_id} "
                    f">= vocab_size {limits.vocab_size}"
                )
            told.add(token.seq_id)
        seen: set[int] = set()
        for new in plan.new_sequences:
            if new.seq_id in seen:
                raise InvalidArgumentError(f"sequence {new.seq_id} appears twice in step {plan.step_id}")
            seen.add(new.seq_id)
            _check_new(new, limits)
            _check_chunk(
                new.seq_id,
                len(new.token_ids),
                new.block_ids,
                new.num_computed_tokens,
                new.num_scheduled_tokens,
                limits,
            )
        for running in plan.running_sequences:
            if running.seq_id in seen:
                raise InvalidArgumentError(f"sequence {running.seq_id} appears twice in step {plan.step_id}")
            seen.add(running.seq_id)
            state = self.sequences.get(running.seq_id)
            if state is None or running.seq_id in finished:
                raise FailedPreconditionError(
                    f"step {plan.step_id}: worker holds no sequence {running.seq_id}; send it in "
                    "new_sequences (in full) after a Reset, a preemption or a worker restart"
                )
            if running.num_computed_tokens != state.num_computed_tokens:
                raise FailedPreconditionError(
                    f"step {plan.step_id}: sequence {running.seq_id} has {state.num_computed_tokens} "
                    f"computed tokens on this worker but the scheduler says {running.num_computed_tokens}; "
                    "the scheduler and worker disagree - reset the worker and resend the sequence in full"
                )
            # A token told in this plan is appended before the step runs.
            learned = 1 if running.seq_id in told and lacks_next_token(state) else 0
            _check_chunk(
                running.seq_id,
                len(state.token_ids) + learned,
                state.block_table + running.new_block_ids,
                running.num_computed_tokens,
                running.num_scheduled_tokens,
                limits,
            )

    def apply(self, plan: StepPlan) -> list[tuple[SequenceState, int]]:
        """Applies a validated plan's sequence deltas; returns (sequence, tokens to compute) in plan
        order. Block moves are the KV cache's to apply."""
        for seq_id in plan.finished_seq_ids:
            self.sequences.pop(seq_id, None)
        scheduled: list[tuple[SequenceState, int]] = []
        for new in plan.new_sequences:
            state = SequenceState(
                seq_id=new.seq_id,
                token_ids=list(new.token_ids),
                block_table=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                num_output_tokens=new.num_output_tokens,
                sampling=new.sampling,
            )
            self.sequences[new.seq_id] = state
            if new.num_scheduled_tokens:
                scheduled.append((state, new.num_scheduled_tokens))
        for told in plan.sampled_tokens:
            state = self.sequences.get(told.seq_id)
            if state is not None and lacks_next_token(state):
                state.token_ids.append(told.token_id)
                state.num_output_tokens += 1
        for running in plan.running_sequences:
            state = self.sequences[running.seq_id]
            state.block_table.extend(running.new_block_ids)
            if running.num_scheduled_tokens:
                scheduled.append((state, running.num_scheduled_tokens))
        return scheduled


def _check_new(new: NewSequence, limits: PlanLimits) -> None:
    if not new.token_ids:
        raise InvalidArgumentError(f"new sequence {new.seq_id} has no tokens")
    bad = [t for t in new.token_ids if t >= limits.vocab_size]
    if bad:
        raise InvalidArgumentError(
            f"sequence {new.seq_id} has token id {bad[0]} >= vocab_size {limits.vocab_size}"
        )
    violation = sampling_violation(new.sampling)
    if violation is not None:
        raise InvalidArgumentError(
            f"sequence {new.seq_id} has out-of-range sampling parameters: {violation[1]}"
        )
    bad_bias = [token for token, _ in new.sampling.logit_bias if token >= limits.vocab_size]
    if bad_bias:
        raise InvalidArgumentError(
            f"sequence {new.seq_id} has logit_bias for token id {bad_bias[0]} "
            f">= vocab_size {limits.vocab_size}"
        )


def _check_chunk(
    seq_id: int, known: int, blocks: list[int], computed: int, scheduled: int, limits: PlanLimits
) -> None:
    end = computed + scheduled
    if end > known:
        raise InvalidArgumentError(
            f"sequence {seq_id}: computing tokens up to {end} but only {known} tokens are known"
        )
    if end > limits.max_model_len:
        raise InvalidArgumentError(
            f"sequence {seq_id}: {end} tokens exceed max_model_len {limits.max_model_len}"
        )
    if len(blocks) * limits.block_size < end:
        raise InvalidArgumentError(
            f"sequence {seq_id}: {len(blocks)} blocks of {limits.block_size} tokens cannot hold {end} tokens"
        )
    bad = [b for b in blocks if b >= limits.num_blocks]
    if bad:
        raise InvalidArgumentError(f"sequence {seq_id}: block id {bad[0]} >= num_blocks {limits.num_blocks}")
