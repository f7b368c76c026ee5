"""Bad step plans and out-of-order calls fail with an actionable error and change nothing."""

from __future__ import annotations

import grpc
import pytest
import torch
from infermesh.v1 import worker_pb2
from infermesh_worker.errors import WorkerError
from infermesh_worker.model_runner import LoadSpec, ModelRunner
from infermesh_worker.plan_codec import decode_plan
from infermesh_worker.status_table import status_of

from tests.model_factory import build_random_model
from tests.worker.conftest import make_runner
from tests.worker.step_plans import StepPlanner


def _code(excinfo) -> grpc.StatusCode:
    return status_of(excinfo.value)[0]


def test_execute_before_load_is_failed_precondition():
    runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 20)
    with pytest.raises(WorkerError, match="LoadModel") as excinfo:
        runner.execute(decode_plan(worker_pb2.StepPlan(step_id=1)))
    assert _code(excinfo) == grpc.StatusCode.FAILED_PRECONDITION


def test_computed_token_mismatch_is_failed_precondition_and_state_is_kept(model_dirs):
    runner = make_runner(model_dirs["llama"])
    planner = StepPlanner(4, 128)
    planner.add(1, [1, 2, 3, 4, 5])
    planner.record(runner.execute(planner.records({1: 5})).tokens)
    bad = worker_pb2.StepPlan(step_id=9)
    bad.running_sequences.add(seq_id=1, num_computed_tokens=3, num_scheduled_tokens=1)
    with pytest.raises(
        WorkerError, match="5 computed tokens on this worker but the scheduler says 3"
    ) as excinfo:
        runner.execute(decode_plan(bad))
    assert _code(excinfo) == grpc.StatusCode.FAILED_PRECONDITION
    assert runner.sequences[1].num_computed_tokens == 5
    unknown = worker_pb2.StepPlan(step_id=10)
    unknown.running_sequences.add(seq_id=77, num_computed_tokens=0, num_scheduled_tokens=1)
    with pytest.raises(WorkerError, match="holds no sequence 77") as excinfo:
        runner.execute(decode_plan(unknown))
    assert _code(excinfo) == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("new_sequence", "message"),
    [
        (dict(token_ids=[1, 2, 3], block_ids=[0], num_scheduled_tokens=4), "only 3 tokens are known"),
        (dict(token_ids=[1, 2, 3, 4, 5], block_ids=[0], num_scheduled_tokens=5), "cannot hold 5 tokens"),
        (dict(token_ids=[1, 2], block_ids=[500], num_scheduled_tokens=2), "block id 500 >= num_blocks"),
        (dict(token_ids=[1, 9999], block_ids=[0], num_scheduled_tokens=2), "token id 9999 >= vocab_size"),
    ],
)
def test_bad_new_sequence_is_invalid_argument(model_dirs, new_sequence, message):
    runner = make_runner(model_dirs["llama"])
    plan = worker_pb2.StepPlan(step_id=1)
    plan.new_sequences.add(seq_id=1, **new_sequence)
    with pytest.raises(WorkerError, match=message) as excinfo:
        runner.execute(decode_plan(plan))
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
    assert runner.sequences == {}


def test_unsupported_models_are_refused(tmp_path, model_dirs):
    yarn = build_random_model(
        "llama",
        tmp_path / "yarn",
        extra_config={"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
    )
    runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 20)
    with pytest.raises(WorkerError, match="rope scaling type 'yarn'") as excinfo:
        runner.load_model(LoadSpec(model_path=str(yarn)))
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(WorkerError, match="dtype 'int8' is not supported"):
        runner.load_model(LoadSpec(model_path=str(model_dirs["llama"]), dtype="int8"))
    with pytest.raises(WorkerError, match="num_attention_heads=4 is not divisible by tp_size=3"):
        runner.load_model(LoadSpec(model_path=str(model_dirs["llama"]), tp_size=3, tp_rank=0))
    with pytest.raises(WorkerError, match="not a directory"):
        runner.load_model(LoadSpec(model_path=str(tmp_path / "missing")))


def test_load_reports_blocks_that_fit_the_budget(model_dirs):
    runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 20)
    result = runner.load_model(LoadSpec(model_path=str(model_dirs["qwen3"]), block_size=16))
    # Qwen3 test model: 2 layers, 2 KV heads, head_dim 32, fp32.
    assert result.block_bytes == 16 * 2 * 2 * 2 * 32 * 4
    assert result.max_num_blocks == (1 << 20) // result.block_bytes


def test_checkpoint_that_does_not_match_its_config_is_refused(tmp_path, model_dirs):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["llama"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 96  # the weights say 128
    (broken / "config.json").write_text(json.dumps(config))
    runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 20)
    with pytest.raises(WorkerError, match="does not match its config.json") as excinfo:
        runner.load_model(LoadSpec(model_path=str(broken)))
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
    # The runner is still usable: a good model loads afterwards.
    assert runner.load_model(LoadSpec(model_path=str(model_dirs["llama"]))).max_num_blocks > 0
