"""disable_sliding_window, as the scheduler sends it in LoadModel: false keeps the checkpoint's
sliding window, true gives full attention; each compared with transformers on the same weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from infermesh_worker.errors import InvalidArgumentError
from infermesh_worker.model_config import parse_model_config

from tests.model_factory import build_random_model, transformers_last_logits
from tests.worker.conftest import make_runner
from tests.worker.step_plans import StepPlanner

BLOCK_SIZE = 4
WINDOW = 8
PROMPT = [(11 * i) % 200 + 3 for i in range(21)]  # 21 tokens: well past the window of 8


@pytest.fixture(scope="module")
def windowed_and_full(tmp_path_factory):
    """The same random Mistral weights twice: config.json with sliding_window=8, and with None."""
    root = tmp_path_factory.mktemp("sliding-window")
    windowed = build_random_model(
        "mistral", root / "windowed", extra_config={"sliding_window": WINDOW}, seed=5
    )
    full = root / "full"
    shutil.copytree(windowed, full)
    config = json.loads((full / "config.json").read_text())
    config["sliding_window"] = None
    (full / "config.json").write_text(json.dumps(config))
    return windowed, full


def _prefill_logits(model_dir, **spec) -> torch.Tensor:
    runner = make_runner(model_dir, block_size=BLOCK_SIZE, **spec)
    captured: list[torch.Tensor] = []
    original = runner.model.compute_logits

    def compute_logits(hidden):
        logits = original(hidden)
        captured.append(logits.detach().clone())
        return logits

    runner.model.compute_logits = compute_logits
    planner = StepPlanner(BLOCK_SIZE, num_blocks=64)
    planner.add(1, PROMPT)
    planner.record(runner.execute(planner.records({1: 13})).tokens)  # the chunk edge is past the window
    planner.record(runner.execute(planner.records({1: len(PROMPT) - 13})).tokens)
    assert len(captured) == 1
    return captured[0][0]


def test_the_window_changes_the_reference_logits(windowed_and_full):
    windowed, full = windowed_and_full
    difference = transformers_last_logits(windowed, PROMPT) - transformers_last_logits(full, PROMPT)
    assert difference.abs().max() > 1e-3  # otherwise the two tests below could not tell them apart


def test_false_keeps_the_checkpoints_window(windowed_and_full):
    windowed, _ = windowed_and_full
    logits = _prefill_logits(windowed, disable_sliding_window=False)
    torch.testing.assert_close(logits, transformers_last_logits(windowed, PROMPT), atol=2e-4, rtol=1e-4)


def test_true_attends_to_the_whole_context(windowed_and_full):
    windowed, full = windowed_and_full
    logits = _prefill_logits(windowed, disable_sliding_window=True)
    torch.testing.assert_close(logits, transformers_last_logits(full, PROMPT), atol=2e-4, rtol=1e-4)


def test_qwen2_use_sliding_window_is_served_only_with_full_attention():
    raw = {
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "use_sliding_window": True,
        "sliding_window": 8,
    }
    with pytest.raises(InvalidArgumentError, match="disable_sliding_window: true"):
        parse_model_config(raw)
    assert parse_model_config(raw, disable_sliding_window=True).sliding_window is None


@pytest.mark.parametrize("disable", [False, True])
def test_the_option_travels_from_the_scheduler_config_to_the_workers_model(windowed_and_full, disable):
    """The scheduler's LoadModelRequest (as its worker group builds it) loaded by a worker servicer."""
    from infermesh_scheduler.worker_group import WorkerGroup
    from infermesh_shared.config import config_from_options
    from infermesh_shared.grpc_transport import TlsFiles
    from infermesh_worker.model_runner import ModelRunner
    from infermesh_worker.servicer import WorkerServicer

    windowed, _ = windowed_and_full
    cfg = config_from_options("scheduler", model_path=str(windowed), disable_sliding_window=disable)
    assert cfg.model_config.disable_sliding_window is disable
    group = WorkerGroup(cfg, TlsFiles(), on_state=lambda event: None)
    request = group._load_request(0, "", "gloo")
    assert request.disable_sliding_window is disable
    servicer = WorkerServicer(ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 22))
    try:
        servicer.LoadModel(request, context=None)
        assert servicer.runner.config.sliding_window == (None if disable else WINDOW)
    finally:
        servicer.close()


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code, details):
        raise _Aborted(code, details)


def test_qwen2_with_use_sliding_window_loads_through_the_servicer_only_when_disabled(tmp_path):
    import grpc
    from infermesh.v1 import worker_pb2
    from infermesh_worker.model_runner import ModelRunner
    from infermesh_worker.servicer import WorkerServicer

    model_dir = build_random_model(
        "qwen2", tmp_path / "qwen2", extra_config={"use_sliding_window": True, "sliding_window": 8}, seed=2
    )
    servicer = WorkerServicer(ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 22))
    try:
        request = worker_pb2.LoadModelRequest(model_path=str(model_dir), dtype="fp32", block_size=4)
        with pytest.raises(_Aborted) as err:
            servicer.LoadModel(request, _Context())
        assert err.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert "disable_sliding_window: true" in err.value.args[1]
        request.disable_sliding_window = True
        assert servicer.LoadModel(request, _Context()).max_num_blocks > 0
        assert servicer.runner.config.sliding_window is None
    finally:
        servicer.close()
