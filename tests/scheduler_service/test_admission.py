"""Submit refusals through a real scheduler process: INVALID_ARGUMENT, queue overflow, deadlines."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc
from infermesh_shared.field_violation import violated_field

from tests.scheduler_service.service_harness import (
    MAX_POSITIONS,
    VOCAB_SIZE,
    assert_no_plan_errors,
    health_status,
    load,
    start_fake_worker,
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
)

pytestmark = pytest.mark.e2e


def submit_error(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Submit(request, timeout=10))
    return err.value


INVALID_CASES = [
    (dict(prompt=[]), "prompt_token_ids is empty", "prompt_token_ids"),
    (dict(prompt=[1, 2, VOCAB_SIZE + 5]), f"token id {VOCAB_SIZE + 5} at position 2", "prompt_token_ids"),
    (dict(max_tokens=0), "max_tokens must be >= 1, got 0", "sampling.max_tokens"),
    (
        dict(prompt=[1] * 200, max_tokens=100),
        "prompt (200 tokens) + max_tokens (100) = 300 tokens exceeds "
        f"the model's max_model_len of {MAX_POSITIONS}",
        "sampling.max_tokens",
    ),
    (dict(temperature=-0.5), "temperature must be >= 0 (0 means greedy), got -0.5", "sampling.temperature"),
    (dict(top_p=0.0), "top_p must be in (0, 1] (1 disables it), got 0.0", "sampling.top_p"),
    (dict(top_p=1.5), "top_p must be in (0, 1] (1 disables it), got 1.5", "sampling.top_p"),
    (dict(top_k=-1), "top_k must be >= 0 (0 disables it), got -1", "sampling.top_k"),
    (dict(min_p=1.5), "min_p must be in [0, 1] (0 disables it), got 1.5", "sampling.min_p"),
    (dict(min_p=-0.1), "min_p must be in [0, 1] (0 disables it), got -0.1", "sampling.min_p"),
    (dict(n=0), "n (number of completions) must be >= 1, got 0", "sampling.n"),
]


@pytest.mark.parametrize(
    ("change", "message", "field"),
    INVALID_CASES,
    ids=[m.split(" ")[0] + str(i) for i, (_, m, _) in enumerate(INVALID_CASES)],
)
def test_invalid_argument(stub, change, message, field):
    fields = {"prompt": [5, 6], "max_tokens": 4}
    fields.update(change)
    prompt, max_tokens = fields.pop("prompt"), fields.pop("max_tokens")
    err = submit_error(stub, submit_request("bad", prompt, max_tokens, **fields))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()
    if "vocab" in message or "token id" in message:
        assert f"vocab_size is {VOCAB_SIZE}" in err.details()
    # The field at fault travels as data (google.rpc.BadRequest in the status details).
    assert violated_field(err.trailing_metadata()) == field


def test_unknown_priority_class_is_invalid(stub):
    request = submit_request("bad-class", [5, 6], 4)
    request.priority_class = 7
    err = submit_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority_class 7" in err.details() and "PRIORITY_CLASS_LATENCY_CRITICAL" in err.details()


def test_missing_sampling_is_invalid(stub):
    err = submit_error(stub, scheduler_pb2.SubmitRequest(request_id="nos", prompt_token_ids=[3]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling" in err.details()


def test_wall_clock_deadline_is_refused(stub):
    # A deadline is the call's remaining time (its gRPC deadline), never another host's wall clock.
    err = submit_error(
        stub, submit_request("late", [3], 4, deadline_unix_ms=int(time.time() * 1000) + 60_000)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gRPC deadline" in err.details()


@pytest.fixture(scope="module")
def slow_served(model_dir):
    """One sequence at a time on a slow worker, a queue of 2 that rejects overflow."""
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        "64",
        "--block-size",
        "4",
        "--max-batch-size",
        "1",
        "--max-queue-size",
        "2",
        "--queue-overflow-policy",
        "drop_newest",
    )
    worker = None
    try:
        worker = start_fake_worker(scheduler.address, "slow-0", "--step-delay-ms", "20")
        with grpc.insecure_channel(scheduler.address) as channel:
            yield scheduler_pb2_grpc.SchedulerServiceStub(channel), scheduler.address, worker
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


def test_queue_overflow_drop_newest_and_health(slow_served):
    stub, address, worker = slow_served
    calls = [stub.Submit(submit_request("q-0", [5], 200, ignore_eos=True), timeout=30)]
    next(calls[0])  # q-0 runs (max_batch_size=1); the next two wait
    calls += [stub.Submit(submit_request(f"q-{i}", [5], 200, ignore_eos=True), timeout=30) for i in (1, 2)]
    deadline = time.monotonic() + 10
    while load(stub).num_waiting < 2:  # q-1 and q-2 wait: the queue is full
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # A full queue (>= 80% of max_queue_size) makes the scheduler report NOT_SERVING.
    assert health_status(address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not load(stub).serving
    err = submit_error(stub, submit_request("q-over", [5], 3))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_size=2" in err.details() and "drop_newest" in err.details()
    for call in calls:
        call.cancel()
    wait_all_blocks_free(stub)
    deadline = time.monotonic() + 10
    while health_status(address) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert_no_plan_errors(worker)


def test_deadline_passes_while_running(slow_served):
    stub, _, worker = slow_served
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Submit(submit_request("dl-1", [5], 200, ignore_eos=True), timeout=0.3))
    err = caught.value
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The scheduler's own verdict or gRPC's, whichever reaches the client first.
    assert "deadline" in err.details().lower()
    wait_all_blocks_free(stub)
    assert_no_plan_errors(worker)


def test_client_cancel_of_waiting_request_frees_queue(slow_served):
    stub, _, worker = slow_served
    running = stub.Submit(submit_request("w-run", [5], 200, ignore_eos=True), timeout=30)
    next(running)
    waiting = stub.Submit(submit_request("w-wait", [5], 5), timeout=30)
    deadline = time.monotonic() + 10
    while load(stub).num_waiting < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting.cancel()
    while load(stub).num_waiting > 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    running.cancel()
    wait_all_blocks_free(stub)
    assert_no_plan_errors(worker)


@pytest.fixture
def tiny_queue(model_dir, request):
    """One running sequence, a queue of one, the overflow policy given by the test's param."""
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        "64",
        "--block-size",
        "4",
        "--max-batch-size",
        "1",
        "--max-queue-size",
        "1",
        "--queue-overflow-policy",
        *request.param.split(),  # the policy, then any further scheduler flags
    )
    worker = None
    try:
        worker = start_fake_worker(scheduler.address, "tq-0", "--step-delay-ms", "10")
        with grpc.insecure_channel(scheduler.address) as channel:
            yield scheduler_pb2_grpc.SchedulerServiceStub(channel), worker
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


def _fill(stub, running_tokens: int):
    """A running request and a waiting one: the queue of one is full."""
    running = stub.Submit(submit_request("fill-run", [5], running_tokens, ignore_eos=True), timeout=30)
    next(running)
    waiting = stub.Submit(submit_request("fill-wait", [7], 3), timeout=30)
    deadline = time.monotonic() + 10
    while load(stub).num_waiting < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return running, waiting


@pytest.mark.parametrize("tiny_queue", ["block"], indirect=True)
def test_block_policy_waits_for_room_unless_non_blocking(tiny_queue):
    stub, worker = tiny_queue
    running, waiting = _fill(stub, 30)
    err = submit_error(stub, submit_request("nb", [9], 3, non_blocking=True))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_size=1" in err.details()
    # A blocking submit waits until fill-wait starts running, then runs itself.
    blocked = [t for r in stub.Submit(submit_request("blocked", [9], 3), timeout=30) for t in r.token_ids]
    assert blocked == [10, 11, 12]
    assert [t for r in waiting for t in r.token_ids] == [8, 9, 10]
    assert len([t for r in running for t in r.token_ids]) == 29  # the first token was read by _fill
    wait_all_blocks_free(stub)
    assert_no_plan_errors(worker)


@pytest.mark.parametrize(
    ("tiny_queue", "request_timeout_ms", "named_ms"),
    [
        ("block", 300, 300),
        ("block --queue-timeout-ms 250", 0, 250),
        ("block --queue-timeout-ms 60000", 300, 300),
    ],
    indirect=["tiny_queue"],
)
def test_block_policy_fails_fast_after_queue_timeout_ms(tiny_queue, request_timeout_ms, named_ms):
    """The request's queue_timeout_ms, else the scheduler's: RESOURCE_EXHAUSTED, nothing left queued."""
    stub, worker = tiny_queue
    running, waiting = _fill(stub, 200)
    started = time.monotonic()
    err = submit_error(stub, submit_request("impatient", [9], 3, queue_timeout_ms=request_timeout_ms))
    assert time.monotonic() - started >= named_ms / 1000  # it did wait for room that long
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"queue_timeout_ms={named_ms}" in err.details()
    # No queue entry and no live id left behind: the same id is refused for the full queue only.
    assert load(stub).num_waiting == 1
    again = submit_error(stub, submit_request("impatient", [9], 3, non_blocking=True))
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queue_size=1" in again.details()
    running.cancel()
    assert [t for r in waiting for t in r.token_ids] == [8, 9, 10]
    wait_all_blocks_free(stub)
    assert_no_plan_errors(worker)


@pytest.mark.parametrize("tiny_queue", ["drop_oldest"], indirect=True)
def test_drop_oldest_policy_ends_the_oldest_waiting_request(tiny_queue):
    stub, worker = tiny_queue
    running, waiting = _fill(stub, 30)
    newest = [t for r in stub.Submit(submit_request("newest", [9], 3), timeout=30) for t in r.token_ids]
    assert newest == [10, 11, 12]
    with pytest.raises(grpc.RpcError) as err:
        list(waiting)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "drop_oldest" in err.value.details()
    running.cancel()
    wait_all_blocks_free(stub)
    assert_no_plan_errors(worker)
