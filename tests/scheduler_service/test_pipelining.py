"""Pipeline parallel: a pp_size=2 scheduler keeps two plans in flight on real worker processes.

The fake workers sleep in every Execute (outside their state lock), so overlapping calls show up
as "executes in flight: 2" on their stdout; the tokens must still be exactly the counting sequence
of the fake model, and every plan must fit the state the workers hold (no "plan error").
"""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2
from infermesh.v1 import scheduler_pb2_grpc

from tests.scheduler_service.service_harness import (
    assert_no_plan_errors,
    expected_tokens,
    start_fake_worker,
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
    wait_health,
)

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def pipeline(model_dir):
    started = []
    try:
        scheduler = start_scheduler(
            model_dir, "--total-blocks", "64", "--block-size", "4", "--pp-size", "2", "--num-workers", "2"
        )
        started.append(scheduler)
        for name in ("stage0", "stage1"):
            started.append(start_fake_worker(scheduler.address, name, "--step-delay-ms", "30"))
        wait_health(scheduler.address, SERVING)
        yield scheduler, started[1:]
    finally:
        for process in reversed(started):
            process.stop()


def test_pp2_keeps_two_plans_in_flight_and_tokens_stay_exact(pipeline):
    scheduler, workers = pipeline
    prompts = {f"r{i}": [10 * i + 1, 10 * i + 2] for i in range(8)}
    results: dict[str, list[int] | grpc.RpcError] = {}
    with grpc.insecure_channel(scheduler.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        def run(rid: str) -> None:
            try:
                responses = stub.Submit(submit_request(rid, prompts[rid], 6), timeout=60)
                results[rid] = [t for r in responses for t in r.token_ids]
            except grpc.RpcError as err:
                results[rid] = err

        threads = [threading.Thread(target=run, args=(rid,)) for rid in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        for rid, prompt in prompts.items():
            assert results.get(rid) == expected_tokens(prompt, 6), (rid, results.get(rid))
        wait_all_blocks_free(stub)
    for worker in workers:
        assert_no_plan_errors(worker)
    # Both stages received a second plan while the first was still executing.
    for worker in workers:
        assert "executes in flight: 2" in worker.output_tail(200), worker.output_tail(200)
