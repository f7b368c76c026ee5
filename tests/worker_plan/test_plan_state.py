"""The worker's plan bookkeeping on its own: no torch, no protobuf (plan_state.py, step_plan.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from infermesh_worker.errors import FailedPreconditionError, InvalidArgumentError
from infermesh_worker.plan_state import PlanLimits, SequenceTable
from infermesh_worker.step_plan import NewSequence, RunningSequence, SamplingSpec, StepPlan, ToldToken

LIMITS = PlanLimits(num_blocks=8, num_cpu_blocks=2, block_size=4, vocab_size=100, max_model_len=32)


def new(seq_id=1, tokens=(1, 2, 3, 4, 5), blocks=(0, 1), computed=0, scheduled=5, **sampling) -> NewSequence:
    return NewSequence(seq_id, list(tokens), list(blocks), computed, scheduled, 0, SamplingSpec(**sampling))


def test_plan_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import infermesh_worker.plan_state, infermesh_worker.step_plan, infermesh_worker.sequence_state\n"
        "assert 'google.protobuf' not in sys.modules, 'plan_state pulled in protobuf'\n"
        # Faults are domain values; only the servicer's status_table.py knows gRPC.
        "assert 'grpc' not in sys.modules, 'plan_state pulled in grpc'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_apply_tracks_new_running_told_and_finished():
    table = SequenceTable()
    first = StepPlan(step_id=1, new_sequences=[new(1), new(2, tokens=(7, 8), blocks=(2,), scheduled=2)])
    table.validate(first, LIMITS)
    scheduled = table.apply(first)
    assert [(s.seq_id, n) for s, n in scheduled] == [(1, 5), (2, 2)]
    for state, n in scheduled:
        state.num_computed_tokens += n  # what the runner does after the forward
    # Pipelined: sequence 1's next token was sampled on another rank and is told here.
    second = StepPlan(
        step_id=2,
        finished_seq_ids=[2],
        sampled_tokens=[ToldToken(1, 42)],
        running_sequences=[RunningSequence(1, [3], 5, 1)],
    )
    table.validate(second, LIMITS)
    scheduled = table.apply(second)
    assert list(table.sequences) == [1]
    state = table.sequences[1]
    assert state.token_ids == [1, 2, 3, 4, 5, 42] and state.block_table == [0, 1, 3]
    assert state.num_output_tokens == 1 and [(s.seq_id, n) for s, n in scheduled] == [(1, 1)]
    # A told token the rank already knows is not appended twice.
    table.apply(StepPlan(step_id=3, sampled_tokens=[ToldToken(1, 42)]))
    assert state.token_ids[-1] == 42 and len(state.token_ids) == 6


@pytest.mark.parametrize(
    ("plan", "error", "message"),
    [
        (StepPlan(1, swap_out=[(9, 0)]), InvalidArgumentError, "swap_out move 9->0 is out of range"),
        (StepPlan(1, copy=[(0, 8)]), InvalidArgumentError, "copy move 0->8"),
        (StepPlan(1, new_sequences=[new(1), new(1)]), InvalidArgumentError, "appears twice"),
        (StepPlan(1, new_sequences=[new(tokens=())]), InvalidArgumentError, "has no tokens"),
        (
            StepPlan(1, new_sequences=[new(tokens=(1, 2, 3, 4, 100))]),
            InvalidArgumentError,
            "100 >= vocab_size",
        ),
        (StepPlan(1, new_sequences=[new(scheduled=6)]), InvalidArgumentError, "only 5 tokens are known"),
        (StepPlan(1, new_sequences=[new(blocks=(0,))]), InvalidArgumentError, "cannot hold 5 tokens"),
        (StepPlan(1, new_sequences=[new(blocks=(0, 8))]), InvalidArgumentError, "block id 8 >= num_blocks"),
        (
            StepPlan(1, new_sequences=[new(tokens=range(1, 34), blocks=range(8), scheduled=33)]),
            InvalidArgumentError,
            "max_model_len 32",
        ),
        (StepPlan(1, new_sequences=[new(top_p=1.5)]), InvalidArgumentError, "out-of-range sampling"),
        # The same ranges as the scheduler's (infermesh_shared.sampling_rules), in its words.
        (
            StepPlan(1, new_sequences=[new(temperature=-1.0)]),
            InvalidArgumentError,
            r"out-of-range sampling parameters: temperature must be >= 0",
        ),
        (
            StepPlan(1, new_sequences=[new(top_logprobs=21)]),
            InvalidArgumentError,
            "top_logprobs must be <= 20",
        ),
        (StepPlan(1, sampled_tokens=[ToldToken(1, 100)]), InvalidArgumentError, "sampled token 100"),
        (
            StepPlan(1, running_sequences=[RunningSequence(9, [], 0, 1)]),
            FailedPreconditionError,
            "holds no sequence 9",
        ),
    ],
)
def test_bad_plans_are_refused_before_anything_changes(plan, error, message):
    table = SequenceTable()
    with pytest.raises(error, match=message):
        table.validate(plan, LIMITS)
    assert table.sequences == {}


def test_swaps_need_cpu_blocks_and_running_counts_must_agree():
    no_cpu = PlanLimits(num_blocks=8, num_cpu_blocks=0, block_size=4, vocab_size=100, max_model_len=32)
    with pytest.raises(InvalidArgumentError, match="no CPU swap blocks"):
        SequenceTable().validate(StepPlan(1, swap_in=[(0, 0)]), no_cpu)
    table = SequenceTable()
    table.apply(StepPlan(1, new_sequences=[new(1)]))
    with pytest.raises(
        FailedPreconditionError, match="0 computed tokens on this worker but the scheduler says 3"
    ):
        table.validate(StepPlan(2, running_sequences=[RunningSequence(1, [], 3, 1)]), LIMITS)
    with pytest.raises(FailedPreconditionError, match="holds no sequence 1"):
        table.validate(
            StepPlan(2, finished_seq_ids=[1], running_sequences=[RunningSequence(1, [], 0, 1)]), LIMITS
        )
