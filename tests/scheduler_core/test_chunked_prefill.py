"""Chunked prefill: fixed chunks, chunks capped by the step budget, and chunks sized from the
fitted step-time model."""

from __future__ import annotations

from infermesh_scheduler.core import RunningSequence, StepPlan

from tests.scheduler_core.builders import assert_all_blocks_free, make_pair, make_spec, run_to_completion


def prefill_chunks(sched, worker, rid_prompt_len: int) -> tuple[list[int], int]:
    """Scheduled prefill tokens per step for the long request (seq 2), and decode tokens emitted
    meanwhile by the short request."""
    chunks: list[int] = []
    decode_tokens = 0
    for _ in range(100):
        plan = sched.schedule()
        for new in plan.new_sequences:
            if new.seq_id == 2:
                chunks.append(new.num_scheduled_tokens)
        for run in plan.running_sequences:
            if run.seq_id == 2 and run.num_computed_tokens < rid_prompt_len:
                chunks.append(run.num_scheduled_tokens)
        outs = sched.update(plan, worker.execute(plan))
        sched.check_invariants()
        decode_tokens += sum(len(o.new_token_ids) for o in outs if o.request_id == "short")
        if sum(chunks) >= rid_prompt_len:
            return chunks, decode_tokens
    raise AssertionError("prefill never finished")


def test_fixed_chunks_let_running_decodes_continue():
    sched, worker = make_pair(chunk_size=16, max_model_len=512)
    sched.add_request(make_spec("short", [1, 2, 3], 40))
    sched.update(plan := sched.schedule(), worker.execute(plan))
    sched.add_request(make_spec("long", [(i % 40) + 1 for i in range(100)], 3))
    chunks, decode_tokens = prefill_chunks(sched, worker, 100)
    assert chunks == [16, 16, 16, 16, 16, 16, 4]
    assert decode_tokens == len(chunks)  # one token per step while the long prompt prefilled
    run_to_completion(sched, worker)
    assert_all_blocks_free(sched)


def test_chunks_are_capped_by_the_step_token_budget():
    sched, worker = make_pair(chunk_size=64, max_tokens_per_step=10, max_model_len=512)
    sched.add_request(make_spec("short", [1, 2, 3], 40))
    sched.update(plan := sched.schedule(), worker.execute(plan))
    sched.add_request(make_spec("long", [(i % 40) + 1 for i in range(30)], 3))
    chunks, _ = prefill_chunks(sched, worker, 30)
    assert chunks == [9, 9, 9, 3]


def feed(sched, fixed_s: float, per_token_s: float) -> None:
    for tokens in (10, 100, 300, 50, 200):
        plan = StepPlan(step_id=0, running_sequences=[RunningSequence(1, [], 0, tokens)])
        sched.record_step_time(plan, fixed_s + per_token_s * tokens)


def test_dynamic_chunk_targets_the_step_time():
    sched, worker = make_pair(
        chunked_prefill="dynamic",
        chunk_size=32,
        min_chunk_size=8,
        max_chunk_size=1000,
        target_step_time_ms=50,
        max_tokens_per_step=4096,
        max_model_len=2048,
        num_blocks=512,
    )
    sched.add_request(make_spec("short", [1, 2, 3], 40))
    sched.update(plan := sched.schedule(), worker.execute(plan))
    # Not fitted yet: chunk_size.
    sched.add_request(make_spec("long", [(i % 40) + 1 for i in range(1000)], 3))
    plan = sched.schedule()
    assert [n.num_scheduled_tokens for n in plan.new_sequences] == [32]
    sched.update(plan, worker.execute(plan))
    # 10 ms + 0.1 ms per token: 400 tokens fill 50 ms; two decoding sequences ride along.
    feed(sched, 0.010, 0.0001)
    model = sched.cost_model
    assert abs(model.fixed_s - 0.010) < 1e-6 and abs(model.per_token_s - 0.0001) < 1e-9
    plan = sched.schedule()
    chunk = [r.num_scheduled_tokens for r in plan.running_sequences if r.seq_id == 2]
    assert chunk == [398]
    sched.update(plan, worker.execute(plan))
    run_to_completion(sched, worker)
    assert_all_blocks_free(sched)


def test_dynamic_chunk_is_clamped():
    sched, worker = make_pair(
        chunked_prefill="dynamic",
        min_chunk_size=8,
        max_chunk_size=64,
        target_step_time_ms=50,
        max_model_len=2048,
        num_blocks=512,
    )
    feed(sched, 0.010, 0.00001)  # 4000 tokens would fit: clamp to 64
    sched.add_request(make_spec("a", [(i % 40) + 1 for i in range(300)], 2))
    assert [n.num_scheduled_tokens for n in sched.schedule().new_sequences] == [64]
    sched2, _ = make_pair(
        chunked_prefill="dynamic",
        min_chunk_size=8,
        max_chunk_size=64,
        target_step_time_ms=5,
        max_model_len=2048,
        num_blocks=512,
    )
    feed(sched2, 0.010, 0.001)  # even the fixed cost exceeds the target: clamp to 8
    sched2.add_request(make_spec("a", [(i % 40) + 1 for i in range(300)], 2))
    assert [n.num_scheduled_tokens for n in sched2.schedule().new_sequences] == [8]
