"""Which waiting request each policy starts first (one admission per step to see the order)."""

from __future__ import annotations

import pytest
from infermesh_scheduler.core import PriorityClass, Scheduler

from tests.scheduler_core.builders import make_config, make_spec
from tests.scheduler_core.simulated_worker import SimulatedWorker


def start_order(policy: str, specs, **overrides) -> list[str]:
    config = make_config(policy=policy, max_batch_size=1, max_model_len=4096, num_blocks=512, **overrides)
    sched = Scheduler(config, clock=lambda: 0.0)
    worker = SimulatedWorker(config.block_size, config.num_blocks)
    for spec in specs:
        spec.arrival_time = 0.0
        sched.add_request(spec)
    order: list[str] = []
    seq_to_request = {}
    for _ in range(2000):
        if not sched.has_work():
            break
        plan = sched.schedule()
        for new in plan.new_sequences:
            if new.seq_id not in seq_to_request:
                rid = next(
                    s.request.spec.request_id
                    for r in sched._requests.values()
                    for s in r.sequences
                    if s.seq_id == new.seq_id
                )
                seq_to_request[new.seq_id] = rid
                order.append(rid)
        sched.update(plan, worker.execute(plan))
        sched.check_invariants()
    assert not sched.has_work()
    return order


LC = PriorityClass.LATENCY_CRITICAL


def test_continuous_is_first_come_first_served_ignoring_priority():
    specs = [make_spec(f"r{i}", [i + 1, 2, 3], 1, priority=i) for i in range(4)]
    assert start_order("continuous", specs) == ["r0", "r1", "r2", "r3"]


def test_priority_runs_larger_priority_first_then_arrival():
    specs = [
        make_spec("low", [1, 2], 1, priority=0),
        make_spec("high", [1, 3], 1, priority=5),
        make_spec("mid1", [1, 4], 1, priority=2),
        make_spec("mid2", [1, 5], 1, priority=2),
    ]
    assert start_order("priority", specs) == ["high", "mid1", "mid2", "low"]


def test_edf_serves_earliest_deadline_first():
    specs = [
        make_spec("d50", [1, 2], 1, timeout_s=50),
        make_spec("d10", [1, 3], 1, timeout_s=10),
        make_spec("none", [1, 4], 1),  # synthetic deadline: arrival + max(min_deadline_s, ...) = 100 s
        make_spec("d30", [1, 5], 1, timeout_s=30),
    ]
    assert start_order("edf", specs, min_deadline_s=100.0) == ["d10", "d30", "d50", "none"]


def test_edf_synthetic_deadline_grows_with_expected_work():
    specs = [
        make_spec("long", list(range(1, 200)), 500),
        make_spec("short", [1, 2], 1),
    ]
    assert start_order("edf", specs, min_deadline_s=0.0) == ["short", "long"]


def test_lrs_serves_least_slack_first_where_edf_ties():
    specs = [
        make_spec("small", [1, 2, 3], 1, timeout_s=100),
        make_spec("big", [1, 2, 4], 300, timeout_s=100),
    ]
    assert start_order(
        "edf",
        [
            make_spec(s.request_id, s.prompt_token_ids, s.sampling.max_tokens, timeout_s=s.timeout_s)
            for s in specs
        ],
    ) == ["small", "big"]
    assert start_order("lrs", specs) == ["big", "small"]


def test_fair_interleaves_clients():
    specs = [make_spec(f"a{i}", [1, i + 2], 1, client_id="a") for i in range(4)]
    specs += [make_spec(f"b{i}", [2, i + 2], 1, client_id="b") for i in range(2)]
    assert start_order("fair", specs) == ["a0", "b0", "a1", "b1", "a2", "a3"]


@pytest.mark.parametrize("policy", ["continuous", "priority", "fair", "edf", "lrs"])
def test_latency_critical_class_goes_first_under_every_policy(policy):
    specs = [
        make_spec("t0", [1, 2], 1, priority=9, timeout_s=1),
        make_spec("t1", [1, 3], 1, priority=9, timeout_s=1),
        make_spec("lc", [1, 4], 1, priority_class=LC, timeout_s=500),
    ]
    assert start_order(policy, specs)[0] == "lc"


def test_preemption_takes_the_lowest_priority_latest_arrival():
    config = make_config(policy="priority", num_blocks=8, block_size=4, max_model_len=64)
    sched = Scheduler(config)
    worker = SimulatedWorker(4, 8)
    sched.add_request(make_spec("keep", [1] * 7, 20, priority=5))
    sched.add_request(make_spec("old_low", [2] * 7, 20, priority=1))
    sched.add_request(make_spec("new_low", [3] * 7, 20, priority=1))
    preempted_first = None
    for _ in range(40):
        plan = sched.schedule()
        if plan.finished_seq_ids and preempted_first is None:
            preempted_first = plan.finished_seq_ids[0]
        sched.update(plan, worker.execute(plan))
        sched.check_invariants()
    # seq ids follow arrival: keep=1, old_low=2, new_low=3.
    assert preempted_first == 3


def test_unset_priority_takes_default_priority():
    specs = [
        make_spec("unset", [1, 2], 1, priority=None),
        make_spec("two", [1, 3], 1, priority=2),
        make_spec("four", [1, 4], 1, priority=4),
    ]
    assert start_order("priority", specs, default_priority=3) == ["four", "unset", "two"]


@pytest.mark.parametrize(
    ("policy", "urgent"),
    [
        ("priority", dict(priority=9)),
        ("continuous", dict(priority_class=LC)),
        ("fair", dict(priority_class=LC)),
    ],
)
def test_a_higher_ranked_arrival_preempts_lower_ranked_running_work(policy, urgent):
    config = make_config(policy=policy, num_blocks=7, block_size=4, max_model_len=64)
    sched = Scheduler(config)
    worker = SimulatedWorker(4, 7)
    sched.add_request(make_spec("low1", [1] * 7, 20, priority=1))
    sched.add_request(make_spec("low2", [2] * 7, 20, priority=1))
    for _ in range(3):
        sched.update(plan := sched.schedule(), worker.execute(plan))
    sched.add_request(make_spec("urgent", [3] * 7, 4, **urgent))
    plan = sched.schedule()
    assert [n.seq_id for n in plan.new_sequences] == [3]  # seq 3 is "urgent"
    assert plan.finished_seq_ids  # a low-ranked one was preempted to make room
    sched.update(plan, worker.execute(plan))
    sched.check_invariants()
    for _ in range(200):
        if not sched.has_work():
            break
        sched.update(plan := sched.schedule(), worker.execute(plan))
    assert not sched.has_work()


def test_equal_ranks_never_preempt_for_waiting_work():
    config = make_config(policy="priority", num_blocks=7, block_size=4, max_model_len=64)
    sched = Scheduler(config)
    worker = SimulatedWorker(4, 7)
    sched.add_request(make_spec("a", [1] * 7, 20, priority=1))
    sched.add_request(make_spec("b", [2] * 7, 20, priority=1))
    for _ in range(3):
        sched.update(plan := sched.schedule(), worker.execute(plan))
    sched.add_request(make_spec("c", [3] * 7, 4, priority=1))
    plan = sched.schedule()
    # "c" may start a chunk in the one free block, but nobody is preempted for it.
    assert not plan.finished_seq_ids
    assert sorted(r.seq_id for r in plan.running_sequences) == [1, 2]
