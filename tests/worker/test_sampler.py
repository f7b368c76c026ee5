"""Sampler semantics: greedy, top-k/top-p/min-p supports, seeded reproducibility, logprobs."""

from __future__ import annotations

import torch
from infermesh.v1 import common_pb2
from infermesh_worker.layers.sampler import Sampler, SamplingRow

from tests.worker.conftest import make_runner
from tests.worker.step_plans import StepPlanner

CPU = torch.device("cpu")


def row(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, position=0, logprob=True) -> SamplingRow:
    return SamplingRow(temperature, top_k, top_p, min_p, seed, position, logprob)


def random_logits(rows: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_temperature_zero_and_top_k_one_are_greedy():
    logits = random_logits(8)
    sampler = Sampler(CPU, seed=0)
    greedy, _ = sampler.sample(logits, [row(temperature=0.0)] * 8)
    assert torch.equal(greedy, logits.argmax(-1))
    top1, _ = sampler.sample(logits, [row(temperature=1.5, top_k=1)] * 8)
    assert torch.equal(top1, logits.argmax(-1))


def test_seeded_rows_do_not_depend_on_batch_composition():
    logits = random_logits(6)
    target = logits[2:3]
    alone = [Sampler(CPU, seed=s).sample(target, [row(seed=42, position=5)])[0].item() for s in (1, 2)]
    batched, _ = Sampler(CPU, seed=3).sample(
        logits, [row(), row(seed=7), row(seed=42, position=5), row(), row(temperature=0.0), row(seed=9)]
    )
    assert alone[0] == alone[1] == batched[2].item()
    # A different output position draws different noise, so over many positions the tokens vary.
    tokens = {Sampler(CPU).sample(target, [row(seed=42, position=p)])[0].item() for p in range(40)}
    assert len(tokens) > 1


def test_top_k_top_p_min_p_restrict_the_support():
    logits = random_logits(1, vocab=30, seed=4).repeat(400, 1)
    order = logits[0].argsort(descending=True)
    probs = torch.softmax(logits[0], -1)
    sampler = Sampler(CPU, seed=11)

    top_k, _ = sampler.sample(logits, [row(top_k=3)] * 400)
    assert set(top_k.tolist()) == set(order[:3].tolist())  # all three show up in 400 draws, nothing else

    mass = probs[order].cumsum(0)
    nucleus = int((mass < 0.6).sum()) + 1  # smallest prefix whose mass reaches 0.6
    top_p, _ = sampler.sample(logits, [row(top_p=0.6)] * 400)
    assert set(top_p.tolist()) <= set(order[:nucleus].tolist())

    threshold = 0.2 * probs.max()
    min_p, _ = sampler.sample(logits, [row(min_p=0.2)] * 400)
    assert all(probs[t] >= threshold for t in min_p.tolist())
    assert len(set(min_p.tolist())) < len(set(sampler.sample(logits, [row()] * 400)[0].tolist()))


def test_logprobs_are_of_the_processed_distribution():
    logits = random_logits(3)
    sampler = Sampler(CPU, seed=0)
    tokens, logprobs = sampler.sample(logits, [row(temperature=0.0), row(temperature=0.5), row(top_k=2)])
    expected0 = torch.log_softmax(logits[0], -1)[tokens[0]]
    expected1 = torch.log_softmax(logits[1] / 0.5, -1)[tokens[1]]
    top2 = logits[2].topk(2)
    expected2 = torch.log_softmax(top2.values, -1)[(top2.indices == tokens[2]).nonzero()[0, 0]]
    torch.testing.assert_close(logprobs, torch.stack([expected0, expected1, expected2]))


def _generate(runner, planner, seq_ids, count):
    while any(len(planner.sequences[s].outputs) < count for s in seq_ids):
        schedule = {
            s: n for s, n in planner.decode_all().items() if len(planner.sequences[s].outputs) < count
        }
        planner.record(runner.execute(planner.records(schedule)).tokens)


def test_seeded_request_reproducible_across_batches_and_preemption(model_dirs):
    model_dir = model_dirs["qwen2"]
    prompt = [9, 8, 7, 6, 5, 4]
    seeded = common_pb2.SamplingParams(temperature=1.0, top_p=0.95, max_tokens=8, seed=1234)
    unseeded = common_pb2.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=8)

    # Alone.
    runner = make_runner(model_dir)
    planner = StepPlanner(4, 128)
    planner.add(1, prompt, seeded)
    planner.record(runner.execute(planner.records({1: len(prompt)})).tokens)
    _generate(runner, planner, [1], 8)
    alone = planner.sequences[1].outputs

    # Batched with others, prefilled in two chunks, and preempted (forgotten, resent in full) midway.
    runner = make_runner(model_dir)
    planner = StepPlanner(4, 128)
    planner.add(2, [1, 2, 3, 4, 5, 6, 7, 8, 9], unseeded)
    planner.add(1, prompt, seeded)
    planner.add(3, [50, 51], common_pb2.SamplingParams(temperature=1.0, top_p=1.0, seed=99))
    planner.record(runner.execute(planner.records({2: 9, 1: 3, 3: 2})).tokens)
    planner.record(runner.execute(planner.records({1: 3, **planner.decode_all()})).tokens)
    _generate(runner, planner, [1], 3)
    before = planner.finish(1)
    planner.add(1, before.token_ids, seeded, num_output=len(before.outputs))
    planner.sequences[1].outputs = list(before.outputs)
    planner.record(runner.execute(planner.records({1: len(before.token_ids)})).tokens)
    _generate(runner, planner, [1], 8)
    assert planner.sequences[1].outputs == alone


def test_logprobs_are_skipped_when_no_row_wants_them():
    logits = random_logits(3)
    tokens, logprobs = Sampler(CPU, seed=0).sample(logits, [row(temperature=0.0, logprob=False)] * 3)
    assert torch.equal(tokens, logits.argmax(-1))
    assert torch.equal(logprobs, torch.zeros(3))
