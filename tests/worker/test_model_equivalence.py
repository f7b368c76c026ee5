"""The worker's model runner, driven by step plans, against transformers on the same random weights.

Covers, for each architecture: several prompts of different lengths prefilled in one batch, a
prompt split into chunks across steps (chunked prefill), a prefix-cache hit (num_computed_tokens > 0
over blocks another sequence wrote), and decode steps mixing all of them.
"""

from __future__ import annotations

import pytest
import torch

from tests.model_factory import ARCHS, transformers_greedy, transformers_last_logits
from tests.worker.conftest import make_runner
from tests.worker.step_plans import StepPlanner

NEW_TOKENS = 6
BLOCK_SIZE = 4


def _capture_logits(runner) -> list[tuple[list[int], torch.Tensor]]:
    """Wraps the sampler so each step's (seq_ids, logits) can be compared; sampling is unchanged."""
    captured: list = []
    # The runner samples through sample_with_alternatives (top_logprobs), so the wrap sits there.
    original = runner.sampler.sample_with_alternatives

    def sample(logits, rows):
        captured.append(logits.detach().clone())
        return original(logits, rows)

    runner.sampler.sample_with_alternatives = sample
    return captured


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_and_logits_match_transformers(arch, model_dirs):
    model_dir = model_dirs[arch]
    runner = make_runner(model_dir, block_size=BLOCK_SIZE)
    captured = _capture_logits(runner)
    planner = StepPlanner(BLOCK_SIZE, num_blocks=128)
    prompts = {
        1: [5, 17, 99, 3, 42, 8, 120],  # 7 tokens: prefilled whole
        2: [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],  # 11 tokens: prefilled in chunks 4 + 5 + 2
        3: [200, 7],  # 2 tokens
    }
    for seq_id, prompt in prompts.items():
        planner.add(seq_id, prompt)

    # Remember which sequence each captured logits row belongs to, and the ids it followed.
    expected_rows: list[list[tuple[int, list[int]]]] = []

    def step(schedule: dict[int, int]) -> None:
        prefixes = {sid: list(planner.sequences[sid].token_ids) for sid in schedule}
        expect_sampled = {
            sid
            for sid, n in schedule.items()
            if planner.sequences[sid].num_computed + n == len(prefixes[sid])
        }
        result = runner.execute(planner.records(schedule))
        assert {t.seq_id for t in result.tokens} == expect_sampled
        if result.tokens:
            # Captured logits rows follow the order of the returned tokens.
            expected_rows.append([(t.seq_id, prefixes[t.seq_id]) for t in result.tokens])
        planner.record(result.tokens)

    step({1: 7, 2: 4, 3: 2})
    step({1: 1, 2: 5, 3: 1})
    # Sequence 4 shares sequence 1's first block (tokens 0-3 already computed): a prefix-cache hit.
    prefix_hit = prompts[1][:4] + [77, 66, 55]
    planner.add(4, prefix_hit, prefix_blocks=planner.sequences[1].block_ids[:1], num_computed=4)
    step({**planner.decode_all(), 2: 2, 4: 3})
    while any(len(s.outputs) < NEW_TOKENS for s in planner.sequences.values()):
        step(
            {
                sid: n
                for sid, n in planner.decode_all().items()
                if len(planner.sequences[sid].outputs) < NEW_TOKENS
            }
        )

    prompts[4] = prefix_hit
    for seq_id, prompt in prompts.items():
        got = planner.sequences[seq_id].outputs[:NEW_TOKENS]
        assert got == transformers_greedy(model_dir, prompt, NEW_TOKENS), f"{arch} sequence {seq_id}"

    # Every logits row the sampler saw matches transformers' last-position logits for that prefix.
    assert len(captured) == len(expected_rows)
    for logits, rows in zip(captured, expected_rows, strict=True):
        for row, (seq_id, ids) in enumerate(rows):
            reference = transformers_last_logits(model_dir, ids)
            torch.testing.assert_close(
                logits[row], reference, atol=2e-4, rtol=1e-4, msg=f"{arch} seq {seq_id}"
            )

    for seq_id in list(planner.sequences):
        planner.finish(seq_id)
    runner.execute(planner.records({}))
    assert runner.sequences == {}
    assert sorted(planner.free_blocks) == list(range(128))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_runs_close_to_fp32(dtype, model_dirs):
    """bf16/fp16 weights and KV: last-position logits stay close to the fp32 reference."""
    model_dir = model_dirs["llama"]
    runner = make_runner(model_dir, block_size=BLOCK_SIZE, dtype=dtype)
    captured = _capture_logits(runner)
    planner = StepPlanner(BLOCK_SIZE, num_blocks=128)
    prompt = [5, 17, 99, 3, 42, 8, 120]
    planner.add(1, prompt)
    runner.execute(planner.records({1: len(prompt)}))
    reference = transformers_last_logits(model_dir, prompt)
    assert runner.kv_cache.device_cache.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    # Loose bound: half precision through 2 layers of random weights.
    assert (captured[0][0] - reference).abs().max() < 0.25 * reference.abs().max()
    assert captured[0][0].argmax() == reference.argmax()


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}


@pytest.mark.parametrize("rope", [LLAMA3_ROPE, LINEAR_ROPE], ids=["llama3", "linear"])
def test_tied_embeddings_biases_and_rope_scaling_match_transformers(tmp_path, rope):
    from tests.model_factory import build_random_model

    model_dir = build_random_model(
        "llama",
        tmp_path / "tied",
        tie_word_embeddings=True,
        extra_config={"rope_parameters": rope, "attention_bias": True, "mlp_bias": True},
    )
    runner = make_runner(model_dir, block_size=BLOCK_SIZE)
    planner = StepPlanner(BLOCK_SIZE, num_blocks=128)
    prompt = list(range(3, 40))  # longer than original_max_position_embeddings: scaling matters
    planner.add(1, prompt)
    planner.record(runner.execute(planner.records({1: len(prompt)})).tokens)
    for _ in range(3):
        planner.record(runner.execute(planner.records(planner.decode_all())).tokens)
    assert planner.sequences[1].outputs == transformers_greedy(model_dir, prompt, 4)


def test_mistral_sliding_window_matches_transformers(tmp_path):
    from tests.model_factory import build_random_model

    model_dir = build_random_model("mistral", tmp_path / "window", extra_config={"sliding_window": 6}, seed=3)
    runner = make_runner(model_dir, block_size=BLOCK_SIZE)
    captured = _capture_logits(runner)
    planner = StepPlanner(BLOCK_SIZE, num_blocks=128)
    prompt = [(7 * i) % 200 + 3 for i in range(15)]  # longer than the window
    planner.add(1, prompt)
    planner.record(runner.execute(planner.records({1: 9})).tokens)
    planner.record(runner.execute(planner.records({1: 6})).tokens)  # chunk crosses the window edge
    for _ in range(3):
        planner.record(runner.execute(planner.records(planner.decode_all())).tokens)
    assert planner.sequences[1].outputs == transformers_greedy(model_dir, prompt, 4)
    torch.testing.assert_close(
        captured[0][0], transformers_last_logits(model_dir, prompt), atol=2e-4, rtol=1e-4
    )


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, model_dirs):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dirs["qwen3"], dtype=torch.float32)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    prompt = [9, 19, 29, 39, 49]
    outputs = []
    for directory in (model_dirs["qwen3"], sharded):
        runner = make_runner(directory, block_size=BLOCK_SIZE)
        planner = StepPlanner(BLOCK_SIZE, num_blocks=128)
        planner.add(1, prompt)
        planner.record(runner.execute(planner.records({1: len(prompt)})).tokens)
        for _ in range(3):
            planner.record(runner.execute(planner.records(planner.decode_all())).tokens)
        outputs.append(planner.sequences[1].outputs)
    assert outputs[0] == outputs[1] == transformers_greedy(model_dirs["qwen3"], prompt, 4)
