"""Swap out / swap in / copy move KV blocks exactly, and a swapped sequence continues correctly."""

from __future__ import annotations

import torch
from infermesh_worker.kv_cache import KVCache

from tests.model_factory import transformers_greedy
from tests.worker.conftest import make_runner
from tests.worker.step_plans import StepPlanner


def test_kv_cache_moves_blocks_between_device_and_cpu():
    cache = KVCache(
        2,
        num_blocks=6,
        num_cpu_blocks=3,
        block_size=2,
        num_kv_heads=1,
        head_dim=2,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    cache.device_cache.copy_(
        torch.arange(cache.device_cache.numel(), dtype=torch.float32).view_as(cache.device_cache)
    )
    original = cache.device_cache.clone()
    cache.swap_out([(4, 0), (1, 2)])
    assert torch.equal(cache.cpu_cache[:, :, 0], original[:, :, 4])
    assert torch.equal(cache.cpu_cache[:, :, 2], original[:, :, 1])
    cache.swap_in([(0, 5), (2, 3)])
    assert torch.equal(cache.device_cache[:, :, 5], original[:, :, 4])
    assert torch.equal(cache.device_cache[:, :, 3], original[:, :, 1])
    cache.copy([(0, 2)])
    assert torch.equal(cache.device_cache[:, :, 2], original[:, :, 0])
    untouched = [0, 1, 4]
    assert torch.equal(cache.device_cache[:, :, untouched], original[:, :, untouched])


def test_swapped_out_sequence_resumes_from_cpu_blocks(model_dirs):
    model_dir = model_dirs["llama"]
    runner = make_runner(model_dir, block_size=4, num_blocks=16, num_cpu_blocks=8)
    planner = StepPlanner(4, 16)
    prompt = [4, 8, 15, 16, 23, 42, 7]
    planner.add(1, prompt)
    planner.record(runner.execute(planner.records({1: len(prompt)})).tokens)
    planner.record(runner.execute(planner.records(planner.decode_all())).tokens)  # 8 tokens computed

    # Preempt by swap: forget the sequence and copy its two blocks to CPU blocks 5 and 6.
    seq = planner.finish(1)
    planner.swap_out = [(seq.block_ids[0], 5), (seq.block_ids[1], 6)]
    runner.execute(planner.records({}))
    runner.kv_cache.device_cache[:, :, seq.block_ids] = 1e4  # the blocks are reused by someone else

    # Swap back into different device blocks and resend the sequence with its KV already computed.
    new_blocks = [planner.free_blocks.pop(), planner.free_blocks.pop()]
    planner.swap_in = [(5, new_blocks[0]), (6, new_blocks[1])]
    resumed = planner.add(
        1, seq.token_ids, prefix_blocks=new_blocks, num_computed=8, num_output=len(seq.outputs)
    )
    resumed.shared_blocks = 0
    resumed.outputs = list(seq.outputs)
    planner.record(runner.execute(planner.records({1: 1})).tokens)
    for _ in range(2):
        planner.record(runner.execute(planner.records(planner.decode_all())).tokens)
    assert planner.sequences[1].outputs == transformers_greedy(model_dir, prompt, 5)


def test_copy_on_write_fork_continues_like_its_parent(model_dirs):
    model_dir = model_dirs["qwen3"]
    runner = make_runner(model_dir, block_size=4, num_blocks=16)
    planner = StepPlanner(4, 16)
    prompt = [4, 8, 15, 16, 23, 42]  # 6 tokens: block 0 full, block 1 half full
    parent = planner.add(1, prompt)
    planner.record(runner.execute(planner.records({1: len(prompt)})).tokens)

    # Fork after the first token: share the full block, copy the partial one.
    copy_dst = planner.free_blocks.pop()
    planner.copy = [(parent.block_ids[1], copy_dst)]
    child = planner.add(
        2, parent.token_ids, prefix_blocks=[parent.block_ids[0], copy_dst], num_computed=6, num_output=1
    )
    child.outputs = list(parent.outputs)
    child.shared_blocks = 1
    for _ in range(3):
        planner.record(runner.execute(planner.records(planner.decode_all())).tokens)
    expected = transformers_greedy(model_dir, prompt, 4)
    assert parent.outputs == expected
    assert child.outputs == expected
