"""The in-place paged-attention kernel equals the gather + SDPA path it replaces on CPU.

Layer level: random mixed steps (prefill chunks, prefix hits, decodes) over shuffled block tables,
with and without a sliding window. Model level: the same step plans through two runners, one per
path, give the same logits (fp32, 1e-4).
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from infermesh_worker.attention_metadata import ScheduledChunk, build_attention_metadata
from infermesh_worker.kernels.paged_attention_ext import load_paged_attention
from infermesh_worker.layers.attention import PagedAttention

from tests.model_factory import build_random_model
from tests.worker.conftest import make_runner
from tests.worker.step_plans import StepPlanner

KERNEL = load_paged_attention()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="the C++ kernel did not build here (logged)")


def test_a_kernel_that_does_not_build_falls_back_and_says_why(tmp_path, monkeypatch, caplog):
    from infermesh_worker.kernels import paged_attention_ext as ext

    broken = tmp_path / "paged_attention.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(ext, "SOURCE", broken)
    monkeypatch.setattr(ext, "_loaded", {})
    monkeypatch.setenv(ext.DIR_ENV, str(tmp_path / "build"))
    with caplog.at_level("WARNING"):
        assert ext.load_paged_attention() is None
    assert "using the torch path" in caplog.text
    monkeypatch.setattr(ext, "_loaded", {})
    monkeypatch.setenv(ext.DISABLE_ENV, "1")
    assert ext.load_paged_attention() is None


def test_a_build_lock_left_by_a_killed_builder_does_not_block_the_next_build(tmp_path, monkeypatch):
    import types

    from infermesh_worker.kernels import paged_attention_ext as ext

    monkeypatch.setattr(ext, "_loaded", {})
    monkeypatch.setenv(ext.DIR_ENV, str(tmp_path / "build"))
    directory = ext.build_dir()
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # what torch's build leaves when its process is SIGKILLed
    seen = []

    def fake_build(build_directory):
        seen.append((build_directory / "lock").exists())
        return types.SimpleNamespace(paged_attention="kernel")

    monkeypatch.setattr(ext, "_build", fake_build)
    assert ext.load_paged_attention() == "kernel"
    assert seen == [False]


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), min_size=1, max_size=6),
    block_size=st.sampled_from([1, 4, 16]),
    window=st.sampled_from([None, 5, 17]),
    heads=st.sampled_from([(4, 2), (4, 4), (6, 2)]),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_gather_path(chunks, block_size, window, heads, seed):
    num_heads, kv_heads = heads
    head_dim = 16
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    needed = [-(-(c + s) // block_size) for c, s in chunks]
    num_blocks = sum(needed) + 2
    pool = list(range(num_blocks))
    rng.shuffle(pool)  # tables out of order
    scheduled = [
        ScheduledChunk([pool.pop() for _ in range(n)], c, s) for (c, s), n in zip(chunks, needed, strict=True)
    ]
    tokens = sum(s for _, s in chunks)
    # The cache holds earlier steps' keys (prefix hits, decode history) and garbage elsewhere.
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=gen)
    q = torch.randn(tokens, num_heads, head_dim, generator=gen)
    k = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    v = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    attention = PagedAttention(num_heads, kv_heads, head_dim)
    cpu = torch.device("cpu")

    old_cache = cache.clone()
    old = attention(q, k, v, old_cache, build_attention_metadata(scheduled, block_size, window, cpu))
    new_cache = cache.clone()
    meta = build_attention_metadata(scheduled, block_size, window, cpu, KERNEL)
    assert meta.paged is not None and not meta.prefills and meta.decode is None
    new = attention(q, k, v, new_cache, meta)

    torch.testing.assert_close(new, old, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(new_cache, old_cache, atol=0, rtol=0)


@needs_kernel
def test_kernel_refuses_block_ids_outside_the_cache():
    cache = torch.zeros(2, 3, 4, 1, 8)
    q = torch.zeros(1, 1, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        KERNEL(q, cache[0], cache[1], torch.tensor([[5]]), torch.tensor([0]), torch.tensor([1]), 0, 1.0)
    with pytest.raises(RuntimeError, match="context outside its table"):
        KERNEL(q, cache[0], cache[1], torch.tensor([[1]]), torch.tensor([0]), torch.tensor([9]), 0, 1.0)


def _run_plans(runner, block_size: int) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    # The runner samples through sample_with_alternatives (top_logprobs), so the wrap sits there.
    original = runner.sampler.sample_with_alternatives

    def sample(logits, rows):
        captured.append(logits.detach().clone())
        return original(logits, rows)

    runner.sampler.sample_with_alternatives = sample
    planner = StepPlanner(block_size, num_blocks=96)
    random.Random(7).shuffle(planner.free_blocks)
    planner.add(1, [5, 17, 99, 3, 42, 8, 120, 9, 31])
    planner.add(2, list(range(11, 40)))
    planner.add(3, [200, 7])
    for schedule in ({1: 9, 2: 8, 3: 2}, {1: 1, 2: 13, 3: 1}):
        planner.record(runner.execute(planner.records(schedule)).tokens)
    # A prefix hit on sequence 1's first two blocks, prefilled beside decodes and a last chunk.
    planner.add(
        4,
        [5, 17, 99, 3, 42, 8, 120, 9, 77, 66, 55],
        prefix_blocks=planner.sequences[1].block_ids[:2],
        num_computed=8,
    )
    planner.record(runner.execute(planner.records({**planner.decode_all(), 2: 8, 4: 3})).tokens)
    for _ in range(4):
        planner.record(runner.execute(planner.records(planner.decode_all())).tokens)
    return captured


@needs_kernel
@pytest.mark.parametrize("arch", ["llama", "mistral-window"])
def test_model_logits_equal_on_both_paths(arch, model_dirs, tmp_path):
    if arch == "mistral-window":  # a window shorter than the prompts
        model_dir = build_random_model("mistral", tmp_path / "w", extra_config={"sliding_window": 6}, seed=3)
    else:
        model_dir = model_dirs[arch]
    kernel_runner = make_runner(model_dir, block_size=4, num_blocks=96)
    torch_runner = make_runner(model_dir, block_size=4, num_blocks=96)
    torch_runner._paged_kernel = None
    assert kernel_runner._paged_kernel is not None
    with_kernel = _run_plans(kernel_runner, 4)
    with_torch = _run_plans(torch_runner, 4)
    assert len(with_kernel) == len(with_torch) == 7  # every step samples someone
    for a, b in zip(with_kernel, with_torch, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
