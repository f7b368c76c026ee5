"""Preemption by recompute and by swap, no-preemption waiting, and worker-loss recovery all give
the tokens an undisturbed run gives (the simulated worker's tokens hash the whole history)."""

from __future__ import annotations

import pytest

from tests.scheduler_core.builders import (
    assert_all_blocks_free,
    collect,
    make_pair,
    make_spec,
    run_to_completion,
    step,
)

WORKLOAD = [(f"r{i}", [(i * 13 + j) % 47 + 1 for j in range(5 + 3 * i)], 12 + i) for i in range(6)]


def run(**overrides):
    sched, worker = make_pair(block_size=4, max_model_len=64, **overrides)
    for rid, prompt, max_tokens in WORKLOAD:
        sched.add_request(make_spec(rid, prompt, max_tokens))
    stats = {"swap_out": 0, "swap_in": 0, "resent": 0}
    tokens: dict = {}
    for _ in range(2000):
        if not sched.has_work():
            break
        plan = sched.schedule()
        stats["swap_out"] += len(plan.swap_out)
        stats["swap_in"] += len(plan.swap_in)
        stats["resent"] += sum(1 for n in plan.new_sequences if n.num_output_tokens > 0)
        collect(sched.update(plan, worker.execute(plan)), tokens)
        sched.check_invariants()
    assert not sched.has_work()
    assert_all_blocks_free(sched)
    stats["preemptions"] = sched.load().num_preemptions
    return tokens, stats


@pytest.fixture(scope="module")
def reference():
    tokens, stats = run(num_blocks=256)
    assert stats["preemptions"] == 0
    return tokens


def test_recompute_preemption_gives_identical_outputs(reference):
    tokens, stats = run(num_blocks=10)
    assert stats["preemptions"] > 0 and stats["resent"] > 0 and stats["swap_out"] == 0
    assert tokens == reference


def test_swap_preemption_gives_identical_outputs(reference):
    tokens, stats = run(num_blocks=10, enable_swap=True, num_cpu_blocks=64)
    assert stats["preemptions"] > 0 and stats["swap_out"] > 0 and stats["swap_in"] == stats["swap_out"]
    assert tokens == reference


def test_preemption_threshold_keeps_blocks_back(reference):
    tokens, stats = run(num_blocks=12, preemption_threshold=3)
    assert stats["preemptions"] > 0
    assert tokens == reference


def test_without_preemption_requests_wait_and_all_finish(reference):
    tokens, stats = run(num_blocks=12, enable_preemption=False)
    assert stats["preemptions"] == 0
    assert tokens == reference


def test_swapped_sequences_are_counted_as_preempted():
    sched, worker = make_pair(
        block_size=4, num_blocks=6, enable_swap=True, num_cpu_blocks=16, max_model_len=64
    )
    sched.add_request(make_spec("a", [1] * 7, 9))
    sched.add_request(make_spec("b", [2] * 7, 9))
    seen_swapped = False
    for _ in range(100):
        if not sched.has_work():
            break
        step(sched, worker)
        load = sched.load()
        seen_swapped = seen_swapped or load.num_preempted > 0
    assert seen_swapped and not sched.has_work()
    assert_all_blocks_free(sched)


@pytest.mark.parametrize("swap", [False, True])
def test_worker_loss_requeues_everything_for_recompute(reference, swap):
    extra = dict(enable_swap=True, num_cpu_blocks=64) if swap else {}
    sched, worker = make_pair(block_size=4, max_model_len=64, num_blocks=10, **extra)
    for rid, prompt, max_tokens in WORKLOAD:
        sched.add_request(make_spec(rid, prompt, max_tokens))
    tokens: dict = {}
    for _ in range(12):
        collect(step(sched, worker), tokens)
    plan = sched.schedule()  # in flight when the group dies: its results never arrive
    sched.reset_worker_state()
    worker.reset()
    assert sched.update(plan, []) == []
    sched.check_invariants()
    load = sched.load()
    assert load.num_running == 0 and load.free_blocks == load.total_blocks and load.cached_blocks == 0
    plan = sched.schedule()
    assert plan.new_sequences and not plan.running_sequences and not plan.finished_seq_ids
    collect(sched.update(plan, worker.execute(plan)), tokens)
    for key, more in run_to_completion(sched, worker).items():
        tokens.setdefault(key, []).extend(more)
    assert tokens == reference
    assert_all_blocks_free(sched)
