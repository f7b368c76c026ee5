"""Queue overflow policies and the requests only the scheduler can refuse."""

from __future__ import annotations

import pytest
from infermesh_scheduler.core import EndReason, FinishReason, InvalidRequestError, QueueFullError

from tests.scheduler_core.builders import assert_all_blocks_free, make_pair, make_spec, run_to_completion


@pytest.mark.parametrize("policy", ["block", "drop_newest"])
def test_full_queue_refuses_new_request_naming_the_policy(policy):
    sched, worker = make_pair(max_queue_size=2, queue_overflow_policy=policy)
    sched.add_request(make_spec("a", [1, 2, 3]))
    assert sched.has_queue_room()
    sched.add_request(make_spec("b", [1, 2, 3]))
    assert not sched.has_queue_room()
    with pytest.raises(QueueFullError) as info:
        sched.add_request(make_spec("c", [1, 2, 3]))
    assert info.value.policy == policy
    assert f"queue_overflow_policy={policy}" in info.value.message
    assert "max_queue_size=2" in info.value.message
    # Once the queued requests start running the queue has room again.
    sched.schedule()
    assert sched.has_queue_room()
    sched.check_invariants()


def test_drop_oldest_admits_new_and_ends_oldest_with_resource_exhausted():
    sched, worker = make_pair(max_queue_size=2, queue_overflow_policy="drop_oldest")
    sched.add_request(make_spec("a", [1, 2, 3]))
    sched.add_request(make_spec("b", [4, 5, 6]))
    dropped = sched.add_request(make_spec("c", [7, 8, 9]))
    assert len(dropped) == 1
    out = dropped[0]
    assert out.request_id == "a" and out.finish_reason is FinishReason.ABORT
    assert out.error.reason is EndReason.DROPPED_FOR_NEWER and "drop_oldest" in out.error.message
    assert out.usage is not None and out.usage.completion_tokens == 0
    tokens = run_to_completion(sched, worker)
    assert set(tokens) == {("b", 0), ("c", 0)}
    assert_all_blocks_free(sched)


def test_drop_oldest_skips_requests_already_running():
    sched, worker = make_pair(max_queue_size=1, queue_overflow_policy="drop_oldest")
    sched.add_request(make_spec("a", [1, 2, 3]))
    plan = sched.schedule()
    sched.update(plan, worker.execute(plan))
    sched.add_request(make_spec("b", [1, 2, 3]))
    dropped = sched.add_request(make_spec("c", [1, 2, 3]))
    assert [o.request_id for o in dropped] == ["b"]


@pytest.mark.parametrize(
    ("overrides", "spec_kwargs", "fragment"),
    [
        ({}, dict(prompt=[]), "prompt_token_ids is empty"),
        (
            {"max_model_len": 20},
            dict(prompt=list(range(1, 15)), max_tokens=8),
            "exceeds the model's max_model_len of 20",
        ),
        ({"vocab_size": 50}, dict(prompt=[1, 50]), "outside the vocabulary"),
        ({"enable_cow": False}, dict(prompt=[1, 2], n=2), "enable_cow=true"),
        ({"num_blocks": 4}, dict(prompt=list(range(1, 14)), max_tokens=8), "KV blocks"),
        ({}, dict(prompt=[1, 2], max_tokens=3, resumed=[4, 5, 6]), "reach max_tokens"),
    ],
)
def test_invalid_requests_are_refused_with_a_reason(overrides, spec_kwargs, fragment):
    sched, _ = make_pair(**overrides)
    prompt = spec_kwargs.pop("prompt")
    with pytest.raises(InvalidRequestError, match=fragment):
        sched.add_request(make_spec("x", prompt, **spec_kwargs))
    sched.check_invariants()


def test_duplicate_live_request_id_is_refused():
    sched, _ = make_pair()
    sched.add_request(make_spec("x", [1, 2]))
    with pytest.raises(InvalidRequestError, match="already in use"):
        sched.add_request(make_spec("x", [1, 2]))


def test_abort_frees_blocks_and_tells_the_worker_to_forget():
    sched, worker = make_pair()
    sched.add_request(make_spec("a", list(range(1, 30)), max_tokens=20))
    plan = sched.schedule()
    sched.update(plan, worker.execute(plan))
    seq_id = plan.new_sequences[0].seq_id
    outs = sched.abort_request("a")
    assert [o.finish_reason for o in outs] == [FinishReason.ABORT] and outs[0].usage.completion_tokens == 1
    assert sched.abort_request("a") == []
    assert sched.abort_request("never-seen") == []
    sched.check_invariants()
    assert_all_blocks_free(sched)
    plan = sched.schedule()
    assert plan.finished_seq_ids == [seq_id]
    worker.execute(plan)
    sched.update(plan, [])
    assert not sched.has_work()


def test_abort_between_schedule_and_update_drops_the_token():
    sched, worker = make_pair()
    sched.add_request(make_spec("a", [1, 2, 3], max_tokens=5))
    plan = sched.schedule()
    sampled = worker.execute(plan)
    sched.abort_request("a")
    assert sched.update(plan, sampled) == []
    sched.check_invariants()
    assert_all_blocks_free(sched)


def test_expired_deadlines_end_requests_with_deadline_exceeded():
    sched, worker = make_pair()
    sched.add_request(make_spec("late", [1, 2, 3], max_tokens=20, timeout_s=100.0, arrival_time=0.0))
    sched.add_request(make_spec("fine", [1, 2, 3], max_tokens=2, timeout_s=10_000.0, arrival_time=0.0))
    sched.add_request(make_spec("none", [1, 2, 3], max_tokens=2, arrival_time=0.0))
    plan = sched.schedule()
    sched.update(plan, worker.execute(plan))
    outs = sched.expire_deadlines(now=200.0)
    assert [o.request_id for o in outs] == ["late"]
    assert outs[0].error.reason is EndReason.DEADLINE and "deadline" in outs[0].error.message
    tokens = run_to_completion(sched, worker)
    assert set(tokens) == {("fine", 0), ("none", 0)}
    assert_all_blocks_free(sched)


def test_stop_conditions():
    sched, worker = make_pair()
    history = [1, 2, 3]
    first = worker.next_token(history)
    spec = make_spec("stop", history, max_tokens=10)
    spec.sampling.stop_token_ids = (first,)
    sched.add_request(spec)
    sched.add_request(make_spec("len", [4, 5], max_tokens=3))
    finish = {}
    for _ in range(10):
        for out in sched.update(plan := sched.schedule(), worker.execute(plan)):
            if out.finish_reason:
                finish[out.request_id] = (out.finish_reason, out.usage.completion_tokens)
    assert finish == {"stop": (FinishReason.STOP, 1), "len": (FinishReason.LENGTH, 3)}


def test_resumed_outputs_count_towards_max_tokens_and_are_not_reemitted():
    sched, worker = make_pair()
    prompt = [3, 4, 5]
    resumed = [worker.next_token(prompt)]
    sched.add_request(make_spec("r", prompt, max_tokens=3, resumed=resumed))
    tokens = run_to_completion(sched, worker)
    assert len(tokens[("r", 0)]) == 2
    assert tokens[("r", 0)][0] == worker.next_token(prompt + resumed)


def test_load_snapshot_counts_queue_blocks_and_preemptions():
    sched, worker = make_pair(block_size=4, num_blocks=8, max_batch_size=2, max_model_len=64)
    sched.add_request(make_spec("a", [1] * 7, 20))
    sched.add_request(make_spec("b", [2] * 7, 20))
    sched.add_request(make_spec("c", [3] * 5, 20))
    load = sched.load()
    assert (load.num_waiting, load.num_running, load.num_waiting_tokens) == (3, 0, 19)
    # Nothing held yet; the queue will want 2 + 2 + 2 of the 8 blocks.
    assert load.kv_cache_usage_ratio_projected == pytest.approx(6 / 8)
    plan = sched.schedule()
    sched.update(plan, worker.execute(plan))
    load = sched.load()
    assert (load.num_waiting, load.num_running, load.num_waiting_tokens) == (1, 2, 5)
    assert load.total_blocks == 8 and load.free_blocks == 4 and load.cached_blocks == 0
    # a and b hold 4 blocks; c still wants 2.
    assert load.kv_cache_usage_ratio_projected == pytest.approx(6 / 8)
    for _ in range(12):
        sched.update(plan := sched.schedule(), worker.execute(plan))
        sched.check_invariants()
    load = sched.load()
    assert load.num_preemptions >= 1 and load.num_preempted >= 1 and load.num_running <= 2
    run_to_completion(sched, worker)
    assert_all_blocks_free(sched)
