"""worker_pb2 <-> the worker's plain records, at the servicer: the only place the worker's step
path (and its model loading) sees protobuf."""

from __future__ import annotations

import dataclasses

from infermesh.v1 import common_pb2, worker_pb2

from infermesh_worker.lifecycle import LoadSpec
from infermesh_worker.step_plan import (
    NewSequence,
    RunningSequence,
    SamplingSpec,
    StepPlan,
    StepResult,
    ToldToken,
)


def decode_load_request(request: worker_pb2.LoadModelRequest) -> LoadSpec:
    """The LoadSpec a LoadModel asks for: a number or string left at its proto zero value takes
    LoadSpec's default (the defaults are written there only); a bool is taken as sent."""
    sent = {}
    for spec_field in dataclasses.fields(LoadSpec):
        value = getattr(request, spec_field.name)
        if value or isinstance(value, bool):
            sent[spec_field.name] = value
    return LoadSpec(**sent)


def decode_plan(plan: worker_pb2.StepPlan) -> StepPlan:
    return StepPlan(
        step_id=plan.step_id,
        previous_step_id=plan.previous_step_id,
        finished_seq_ids=list(plan.finished_seq_ids),
        swap_out=[(m.src, m.dst) for m in plan.swap_out],
        swap_in=[(m.src, m.dst) for m in plan.swap_in],
        copy=[(m.src, m.dst) for m in plan.copy],
        new_sequences=[
            NewSequence(
                seq_id=new.seq_id,
                token_ids=list(new.token_ids),
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                num_scheduled_tokens=new.num_scheduled_tokens,
                num_output_tokens=new.num_output_tokens,
                sampling=_sampling(new.sampling),
            )
            for new in plan.new_sequences
        ],
        running_sequences=[
            RunningSequence(
                seq_id=run.seq_id,
                new_block_ids=list(run.new_block_ids),
                num_computed_tokens=run.num_computed_tokens,
                num_scheduled_tokens=run.num_scheduled_tokens,
            )
            for run in plan.running_sequences
        ],
        sampled_tokens=[ToldToken(t.seq_id, t.token_id) for t in plan.sampled_tokens],
        tokens_in_later_plans=plan.tokens_in_later_plans,
    )


def _sampling(s) -> SamplingSpec:
    return SamplingSpec(
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p if s.top_p > 0 else 1.0,
        min_p=s.min_p,
        seed=s.seed if s.HasField("seed") else None,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs if s.logprobs > 0 else 0,  # its range: plan_state's check
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty or 1.0,  # 0: from a frontend that predates the field
        logit_bias=tuple(sorted(s.logit_bias.items())),
        min_tokens=s.min_tokens,
        ignore_eos=s.ignore_eos,
        stop_token_ids=tuple(s.stop_token_ids),
    )


def encode_result(result: StepResult) -> worker_pb2.ExecuteResponse:
    return worker_pb2.ExecuteResponse(
        step_id=result.step_id,
        tokens=[
            worker_pb2.SampledToken(
                seq_id=t.seq_id,
                token_id=t.token_id,
                logprob=t.logprob,
                top=common_pb2.TopLogprobs(token_ids=t.top[0], logprobs=t.top[1]) if t.top else None,
            )
            for t in result.tokens
        ],
        compute_time_us=result.compute_time_us,
    )
