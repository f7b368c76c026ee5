"""Worker group life through real processes: readiness, tp groups, failures, recovery, refusal."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from infermesh.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from tests.scheduler_service.service_harness import (
    assert_no_plan_errors,
    expected_tokens,
    health_status,
    load,
    start_fake_worker,
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
    wait_health,
)

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Processes:
    """Every process a test starts; all are stopped at teardown."""

    def __init__(self) -> None:
        self.started = []

    def scheduler(self, model_dir, *args):
        process = start_scheduler(model_dir, "--total-blocks", "64", "--block-size", "4", *args)
        self.started.append(process)
        return process

    def worker(self, address, name, *args):
        process = start_fake_worker(address, name, *args)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.stop_all()


def stream_in_background(stub, request, results: dict, key: str) -> threading.Thread:
    def run() -> None:
        try:
            results[key] = list(stub.Submit(request, timeout=60))
        except grpc.RpcError as err:
            results[key] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def tokens_of(responses) -> list[int]:
    return [t for r in responses for t in r.token_ids]


def test_not_serving_until_a_worker_registers(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--group-recovery-timeout-ms", "300")
    assert health_status(scheduler.address) == NOT_SERVING
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Submit(submit_request("early", [5], 3), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "0 of 1 workers" in err.value.details()
        assert not load(stub).serving
        procs.worker(scheduler.address, "w0")
        wait_health(scheduler.address, SERVING)
        assert tokens_of(stub.Submit(submit_request("late", [5], 3), timeout=10)) == [6, 7, 8]


def test_submit_waits_for_the_group_to_form(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--group-recovery-timeout-ms", "20000")
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        results: dict = {}
        thread = stream_in_background(stub, submit_request("waits", [9], 4), results, "waits")
        time.sleep(0.3)
        procs.worker(scheduler.address, "w0")
        thread.join(30)
        assert tokens_of(results["waits"]) == expected_tokens([9], 4)


def test_tp2_group_with_standby_survives_a_member_kill(procs, model_dir):
    scheduler = procs.scheduler(
        model_dir, "--tp-size", "2", "--num-workers", "3", "--worker-timeout-ms", "2000"
    )
    first = [procs.worker(scheduler.address, f"w{i}", "--step-delay-ms", "5") for i in range(2)]
    wait_health(scheduler.address, SERVING)
    for w in first:
        assert "init=tcp://127.0.0.1:" in w.output_tail() and "backend=gloo" in w.output_tail()
    assert "rank tp=0" in first[0].output_tail() and "rank tp=1" in first[1].output_tail()
    standby = procs.worker(scheduler.address, "w2", "--step-delay-ms", "5")
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        results: dict = {}
        prompts = {f"r{i}": [10 + i, 20 + i] for i in range(4)}
        threads = [
            stream_in_background(stub, submit_request(k, p, 60, ignore_eos=True), results, k)
            for k, p in prompts.items()
        ]
        deadline = time.monotonic() + 10
        while load(stub).num_running < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first[1].kill()
        for t in threads:
            t.join(60)
        for key, prompt in prompts.items():
            assert not isinstance(results[key], grpc.RpcError), results[key]
            assert tokens_of(results[key]) == expected_tokens(prompt, 60)
            assert results[key][-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert "loaded" in standby.output_tail()  # the standby took the dead member's place
        wait_all_blocks_free(stub)
    for w in (first[0], standby):
        assert_no_plan_errors(w)


def test_killed_worker_replaced_requests_complete(procs, model_dir):
    scheduler = procs.scheduler(
        model_dir, "--worker-timeout-ms", "2000", "--group-recovery-timeout-ms", "20000"
    )
    worker = procs.worker(scheduler.address, "w0", "--step-delay-ms", "5")
    wait_health(scheduler.address, SERVING)
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        results: dict = {}
        threads = [
            stream_in_background(
                stub, submit_request(f"k{i}", [30 + i], 80, ignore_eos=True), results, f"k{i}"
            )
            for i in range(3)
        ]
        deadline = time.monotonic() + 10
        while load(stub).num_running < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.kill()
        wait_health(scheduler.address, NOT_SERVING)
        replacement = procs.worker(scheduler.address, "w0", "--step-delay-ms", "5")
        for t in threads:
            t.join(60)
        for i in range(3):
            assert not isinstance(results[f"k{i}"], grpc.RpcError), results[f"k{i}"]
            assert tokens_of(results[f"k{i}"]) == expected_tokens([30 + i], 80)
        wait_all_blocks_free(stub)
        assert_no_plan_errors(replacement)


def test_group_down_after_recovery_timeout_then_back(procs, model_dir):
    scheduler = procs.scheduler(
        model_dir, "--worker-timeout-ms", "1500", "--group-recovery-timeout-ms", "500"
    )
    worker = procs.worker(scheduler.address, "w0", "--step-delay-ms", "5")
    wait_health(scheduler.address, SERVING)
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        results: dict = {}
        thread = stream_in_background(stub, submit_request("d0", [5], 200, ignore_eos=True), results, "d0")
        deadline = time.monotonic() + 10
        while load(stub).num_running < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.kill()
        thread.join(30)
        assert isinstance(results["d0"], grpc.RpcError)
        assert results["d0"].code() == grpc.StatusCode.UNAVAILABLE
        assert "worker group is down" in results["d0"].details()
        snapshot = load(stub)
        assert snapshot.free_blocks + snapshot.cached_blocks == snapshot.total_blocks
        # While down, new requests are refused at once.
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Submit(submit_request("d1", [5], 3), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        procs.worker(scheduler.address, "w0")
        wait_health(scheduler.address, SERVING)
        assert tokens_of(stub.Submit(submit_request("d2", [5], 3), timeout=10)) == [6, 7, 8]
        wait_all_blocks_free(stub)


def test_idle_worker_death_is_noticed_by_liveness_probe(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--worker-timeout-ms", "900")
    worker = procs.worker(scheduler.address, "w0")
    wait_health(scheduler.address, SERVING)
    worker.kill()
    wait_health(scheduler.address, NOT_SERVING, timeout_s=10)


def test_workers_register_on_ipc_worker_endpoint(procs, model_dir):
    socket_dir = Path(tempfile.mkdtemp(prefix="im-", dir="/tmp"))
    scheduler = procs.scheduler(model_dir, "--worker-endpoint", f"ipc://{socket_dir}/sched.sock")
    procs.worker(f"unix:{socket_dir}/sched.sock", "w0")
    wait_health(scheduler.address, SERVING)


def assert_refuses_to_serve(scheduler, reason: str) -> None:
    """The scheduler logged that it refuses to serve for `reason`, is NOT_SERVING, and answers
    Submit with UNAVAILABLE naming the reason."""
    deadline = time.monotonic() + 10
    while "refusing to serve" not in scheduler.output_tail():
        assert time.monotonic() < deadline, scheduler.output_tail()
        time.sleep(0.05)
    assert reason in scheduler.output_tail()
    assert health_status(scheduler.address) == NOT_SERVING
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Submit(submit_request("x", [5], 3), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason in err.value.details()


def test_total_blocks_beyond_worker_capacity_is_refused(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--group-recovery-timeout-ms", "300")
    procs.worker(scheduler.address, "w0", "--max-num-blocks", "10")
    assert_refuses_to_serve(scheduler, "total_blocks=64 but worker w0 can hold only 10 KV blocks")


def test_pool_too_small_for_preemption_threshold_is_refused(procs, model_dir):
    # Only once the workers report their size can preemption_threshold be judged against the pool.
    scheduler = procs.scheduler(model_dir, "--total-blocks", "0", "--preemption-threshold", "50")
    procs.worker(scheduler.address, "w0", "--max-num-blocks", "10")
    assert_refuses_to_serve(scheduler, "a pool of 10 KV blocks cannot serve this configuration")
    assert "preemption_threshold" in scheduler.output_tail()


def test_total_blocks_zero_sizes_pool_from_workers(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--total-blocks", "0")
    procs.worker(scheduler.address, "w0", "--max-num-blocks", "37")
    wait_health(scheduler.address, SERVING)
    with grpc.insecure_channel(scheduler.address) as channel:
        assert load(scheduler_pb2_grpc.SchedulerServiceStub(channel)).total_blocks == 37


def test_request_that_keeps_failing_the_worker_ends_with_internal(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--worker-timeout-ms", "2000")
    worker = procs.worker(scheduler.address, "w0", "--poison-token", "55")
    wait_health(scheduler.address, SERVING)
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Submit(submit_request("poison", [50], 10), timeout=30))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "failed 3 steps in a row" in err.value.details() and "poison token 55" in err.value.details()
        wait_health(scheduler.address, SERVING)
        assert tokens_of(stub.Submit(submit_request("fine", [5], 3), timeout=10)) == [6, 7, 8]
        wait_all_blocks_free(stub)
        assert_no_plan_errors(worker)


def test_registrations_beyond_num_workers_are_refused_until_one_dies(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--num-workers", "2", "--worker-timeout-ms", "30000")
    first = procs.worker(scheduler.address, "w0")
    procs.worker(scheduler.address, "w1")  # the standby
    wait_health(scheduler.address, SERVING)
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterWorker(
                scheduler_pb2.RegisterWorkerRequest(address="127.0.0.1:1", device="cpu", worker_name="w9"),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "num_workers=2" in err.value.details()
        # A replacement registering before the dead member was noticed (liveness polls are 10 s
        # apart here) makes the scheduler probe, drop the dead one and take the newcomer.
        first.kill()
        procs.worker(scheduler.address, "w2")
        wait_health(scheduler.address, SERVING)
        assert tokens_of(stub.Submit(submit_request("after", [5], 3), timeout=10)) == [6, 7, 8]


def test_tp2_pp2_tokens_come_from_the_last_stage_first_tensor_rank(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--tp-size", "2", "--pp-size", "2", "--num-workers", "4")
    workers = [procs.worker(scheduler.address, f"w{i}") for i in range(4)]
    wait_health(scheduler.address, SERVING)
    # Ranks in registration order: rank = pp_rank * tp_size + tp_rank; only rank 2 returns tokens.
    for w, rank in zip(workers, ["tp=0 pp=0", "tp=1 pp=0", "tp=0 pp=1", "tp=1 pp=1"], strict=True):
        assert f"rank {rank}" in w.output_tail()
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        assert tokens_of(stub.Submit(submit_request("pp", [40, 41], 5), timeout=10)) == expected_tokens(
            [40, 41], 5
        )
        wait_all_blocks_free(stub)
    for w in workers:
        assert_no_plan_errors(w)


def test_worker_refusing_the_model_makes_the_scheduler_refuse_requests(procs, model_dir):
    scheduler = procs.scheduler(model_dir, "--group-recovery-timeout-ms", "20000")
    procs.worker(scheduler.address, "w0", "--refuse-load", "dtype bf16 is not supported on this device")
    deadline = time.monotonic() + 10
    while "refusing to serve" not in scheduler.output_tail():
        assert time.monotonic() < deadline, scheduler.output_tail()
        time.sleep(0.05)
    assert health_status(scheduler.address) == NOT_SERVING
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Submit(submit_request("x", [5], 3), timeout=10))
        assert time.monotonic() - started < 5  # refused at once, not after group_recovery_timeout_ms
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "w0 refused to load the model: dtype bf16 is not supported" in err.value.details()
