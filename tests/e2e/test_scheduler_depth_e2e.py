"""Issue 4 end to end with the real worker: prefix cache hits, and preemption by recompute and by
swap giving the same greedy output as a pool large enough to need neither."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from infermesh.v1 import frontend_pb2, scheduler_pb2

from tests.e2e.harness import (
    TEST_VOCAB_SIZE,
    frontend_stub,
    generate_request,
    scheduler_stub,
    start_cluster,
    wait_all_blocks_free,
)

pytestmark = pytest.mark.e2e

BLOCK = 16
PREFIX_LEN = 256


def _greedy(address: str, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    stub = frontend_stub(address)

    def run(prompt: list[int]) -> list[int]:
        req = generate_request(token_ids=prompt, temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        return list(
            stub.Generate(frontend_pb2.GenerateRequest(input=req), timeout=300).completions[0].token_ids
        )

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(run, prompts))


def _load(cluster) -> scheduler_pb2.GetLoadResponse:
    return scheduler_stub(cluster.scheduler_address).GetLoad(scheduler_pb2.GetLoadRequest())


@pytest.fixture(scope="module")
def reference_cluster(llama_model, tmp_path_factory):
    """Prefix cache off and a pool large enough that nothing is ever preempted."""
    cluster = start_cluster(
        llama_model,
        tmp_path_factory.mktemp("reference-logs"),
        scheduler_args=[
            "--dtype",
            "fp32",
            "--block-size",
            str(BLOCK),
            "--total-blocks",
            "1024",
            "--no-enable-prefix-cache",
        ],
    )
    yield cluster
    wait_all_blocks_free(cluster.scheduler_address)
    cluster.stop()


def test_shared_prefix_hits_the_cache_for_all_but_the_first(llama_model, reference_cluster, tmp_path):
    rng = random.Random(7)
    prefix = [rng.randrange(3, TEST_VOCAB_SIZE) for _ in range(PREFIX_LEN)]
    prompts = [prefix + [rng.randrange(3, TEST_VOCAB_SIZE) for _ in range(5 + i % 7)] for i in range(32)]
    cluster = start_cluster(
        llama_model,
        tmp_path / "logs",
        scheduler_args=["--dtype", "fp32", "--block-size", str(BLOCK), "--total-blocks", "1024"],
    )
    try:
        first = _greedy(cluster.frontend_address, prompts[:1], 6)
        after_first = _load(cluster)
        rest = _greedy(cluster.frontend_address, prompts[1:], 6)
        load = _load(cluster)
        hits = load.prefix_cache_hits - after_first.prefix_cache_hits
        # Every later request finds the whole shared prefix (16 full blocks) in the cache.
        assert hits == 31 * PREFIX_LEN
        assert after_first.prefix_cache_hits == 0
        assert load.prefix_cache_queries > load.prefix_cache_hits
        wait_all_blocks_free(cluster.scheduler_address)
    finally:
        cluster.stop()
    assert first + rest == _greedy(reference_cluster.frontend_address, prompts, 6)
    assert _load(reference_cluster).prefix_cache_hits == 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_gives_the_output_of_a_large_pool(llama_model, reference_cluster, tmp_path, mode):
    rng = random.Random(11)
    prompts = [[rng.randrange(3, TEST_VOCAB_SIZE) for _ in range(30 + 5 * i)] for i in range(8)]
    # 8 requests of up to ~135 tokens need ~60 blocks of 16 at their peak; 20 blocks force preemption.
    args = ["--dtype", "fp32", "--block-size", str(BLOCK), "--total-blocks", "20", "--no-enable-prefix-cache"]
    if mode == "swap":
        args += ["--enable-swap", "--num-cpu-blocks", "128"]
    cluster = start_cluster(llama_model, tmp_path / "logs", scheduler_args=args)
    try:
        got = _greedy(cluster.frontend_address, prompts, 60)
        load = _load(cluster)
        assert load.num_preemptions > 0, "the pool was meant to be too small for the load"
        wait_all_blocks_free(cluster.scheduler_address)
    finally:
        cluster.stop()
    assert got == _greedy(reference_cluster.frontend_address, prompts, 60)
