"""A tp=2 x pp=2 worker group behind a real scheduler and frontend (separate processes): greedy output
equals transformers, and the group survives losing a worker (rebuilt with a fresh process group)."""

from __future__ import annotations

import pytest
from infermesh.v1 import common_pb2, frontend_pb2

from tests.e2e.harness import (
    build_served_model,
    frontend_stub,
    generate_request,
    start_cluster,
    wait_all_blocks_free,
)
from tests.model_factory import transformers_greedy

pytestmark = [pytest.mark.e2e, pytest.mark.multiproc]

PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog."]


def _greedy_matches(stub, model_dir) -> None:
    for text in PROMPTS:
        ids = list(stub.Tokenize(frontend_pb2.TokenizeRequest(text=text, add_special_tokens=True)).token_ids)
        request = generate_request(text=text, temperature=0.0, max_tokens=6, ignore_eos=True)
        response = stub.Generate(frontend_pb2.GenerateRequest(input=request), timeout=120)
        completion = response.completions[0]
        assert list(completion.token_ids) == transformers_greedy(model_dir, ids, 6)
        assert completion.finish_reason == common_pb2.FINISH_REASON_LENGTH


def test_tp2_pp2_cluster_generates_like_transformers_and_recovers(tmp_path):
    model_dir = build_served_model("qwen2", tmp_path / "model", num_layers=3)
    cluster = start_cluster(
        model_dir, tmp_path / "logs", tp_size=2, pp_size=2, scheduler_args=["--dtype", "fp32"]
    )
    try:
        stub = frontend_stub(cluster.frontend_address)
        _greedy_matches(stub, model_dir)
        wait_all_blocks_free(cluster.scheduler_address)

        # Lose a worker; a replacement registers and the scheduler rebuilds the whole group.
        cluster.workers[3].kill()
        cluster.start_workers(1)
        _greedy_matches(stub, model_dir)
        wait_all_blocks_free(cluster.scheduler_address)
    finally:
        cluster.stop()
