"""StepPlan dataclass -> worker.proto: every field arrives, and tokens come back as dataclasses."""

from __future__ import annotations

from infermesh.v1 import worker_pb2
from infermesh_scheduler.core.request import SamplingOptions
from infermesh_scheduler.core.step_plan import BlockMove, NewSequence, RunningSequence, StepPlan
from infermesh_scheduler.plan_codec import plan_to_proto, tokens_from_proto


def _sampling(seed):
    return SamplingOptions(
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        min_p=0.05,
        seed=seed,
        max_tokens=12,
        stop_token_ids=(4, 9),
        ignore_eos=True,
        n=2,
        logprobs=1,
    )


def test_every_field_is_carried():
    plan = StepPlan(
        step_id=41,
        new_sequences=[
            NewSequence(7, [1, 2, 3], _sampling(123), [5, 6], 2, 1, 0),
            NewSequence(8, [4], _sampling(None), [9], 0, 1, 3),
        ],
        running_sequences=[RunningSequence(3, [11], 16, 1), RunningSequence(4, [], 8, 1)],
        finished_seq_ids=[1, 2],
        swap_out=[BlockMove(1, 0)],
        swap_in=[BlockMove(2, 3)],
        copy=[BlockMove(4, 5), BlockMove(6, 7)],
    )
    wire = worker_pb2.StepPlan.FromString(plan_to_proto(plan).SerializeToString())
    assert wire.step_id == 41
    first, second = wire.new_sequences
    assert (first.seq_id, list(first.token_ids), list(first.block_ids)) == (7, [1, 2, 3], [5, 6])
    assert (first.num_computed_tokens, first.num_scheduled_tokens, first.num_output_tokens) == (2, 1, 0)
    s = first.sampling
    assert (s.top_k, s.max_tokens, list(s.stop_token_ids), s.ignore_eos, s.n, s.logprobs) == (
        5,
        12,
        [4, 9],
        True,
        2,
        1,
    )
    assert abs(s.temperature - 0.7) < 1e-6 and abs(s.top_p - 0.9) < 1e-6 and abs(s.min_p - 0.05) < 1e-6
    assert s.HasField("seed") and s.seed == 123
    assert not second.sampling.HasField("seed") and second.num_output_tokens == 3
    assert [
        (r.seq_id, list(r.new_block_ids), r.num_computed_tokens, r.num_scheduled_tokens)
        for r in wire.running_sequences
    ] == [(3, [11], 16, 1), (4, [], 8, 1)]
    assert list(wire.finished_seq_ids) == [1, 2]
    assert [(m.src, m.dst) for m in wire.swap_out] == [(1, 0)]
    assert [(m.src, m.dst) for m in wire.swap_in] == [(2, 3)]
    assert [(m.src, m.dst) for m in wire.copy] == [(4, 5), (6, 7)]


def test_tokens_from_proto():
    response = worker_pb2.ExecuteResponse(
        step_id=3, tokens=[worker_pb2.SampledToken(seq_id=5, token_id=17, logprob=-0.25)]
    )
    [token] = tokens_from_proto(response)
    assert (token.seq_id, token.token_id, token.logprob) == (5, 17, -0.25)
