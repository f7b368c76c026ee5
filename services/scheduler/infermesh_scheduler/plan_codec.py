"""Converts the core's StepPlan dataclass to the worker.proto message and tokens back.

This runs once per engine step for the whole batch, so it builds messages with keyword
constructors (which extend repeated fields in C) and avoids per-field Python loops.
"""

from __future__ import annotations

from collections.abc import Iterable

from infermesh.v1 import common_pb2, worker_pb2

from infermesh_scheduler.core.request import SamplingOptions
from infermesh_scheduler.core.step_plan import BlockMove, SampledToken, StepPlan


def sampling_to_proto(options: SamplingOptions) -> common_pb2.SamplingParams:
    """The proto SamplingParams a worker needs to sample a sequence."""
    params = common_pb2.SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        max_tokens=options.max_tokens,
        stop_token_ids=options.stop_token_ids,
        ignore_eos=options.ignore_eos,
        n=options.n,
        logprobs=options.logprobs,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        repetition_penalty=options.repetition_penalty,
        logit_bias=dict(options.logit_bias),
        min_tokens=options.min_tokens,
        top_logprobs=options.top_logprobs,
    )
    if options.seed is not None:
        params.seed = options.seed
    return params


def _moves(moves: Iterable[BlockMove]) -> list[worker_pb2.BlockMove]:
    return [worker_pb2.BlockMove(src=m.src, dst=m.dst) for m in moves]


def plan_to_proto(plan: StepPlan) -> worker_pb2.StepPlan:
    """The worker.proto StepPlan carrying exactly the fields of `plan`."""
    new_sequences = [
        worker_pb2.NewSequence(
            seq_id=s.seq_id,
            token_ids=s.token_ids,
            sampling=sampling_to_proto(s.sampling),
            block_ids=s.block_ids,
            num_computed_tokens=s.num_computed_tokens,
            num_scheduled_tokens=s.num_scheduled_tokens,
            num_output_tokens=s.num_output_tokens,
        )
        for s in plan.new_sequences
    ]
    running_sequences = [
        worker_pb2.RunningSequence(
            seq_id=s.seq_id,
            new_block_ids=s.new_block_ids,
            num_computed_tokens=s.num_computed_tokens,
            num_scheduled_tokens=s.num_scheduled_tokens,
        )
        for s in plan.running_sequences
    ]
    return worker_pb2.StepPlan(
        step_id=plan.step_id,
        new_sequences=new_sequences,
        running_sequences=running_sequences,
        finished_seq_ids=plan.finished_seq_ids,
        swap_out=_moves(plan.swap_out),
        swap_in=_moves(plan.swap_in),
        copy=_moves(plan.copy),
        sampled_tokens=[
            worker_pb2.SampledToken(seq_id=t.seq_id, token_id=t.token_id) for t in plan.sampled_tokens
        ],
        tokens_in_later_plans=plan.tokens_in_later_plans,
    )


def tokens_from_proto(response: worker_pb2.ExecuteResponse) -> list[SampledToken]:
    """The sampled tokens of one Execute answer as core dataclasses."""
    return [
        SampledToken(
            seq_id=t.seq_id,
            token_id=t.token_id,
            logprob=t.logprob,
            top=(tuple(t.top.token_ids), tuple(t.top.logprobs)) if t.top.token_ids else None,
        )
        for t in response.tokens
    ]
