"""Property-based fuzz of the scheduler's contract: thousands of generated requests (random field
values, oneof choices, out-of-range numbers, huge repeated fields) against a real scheduler process.
Every call ends with a gRPC status, the server logs no traceback, and a normal request still works."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc

from tests.contract_fuzz import build, messages
from tests.scheduler_service.service_harness import (
    expected_tokens,
    start_fake_worker,
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def fuzzed_scheduler(model_dir):
    scheduler = start_scheduler(model_dir, "--total-blocks", "256", "--max-queue-size", "64")
    worker = start_fake_worker(scheduler.address, "w0")
    channel = grpc.insecure_channel(scheduler.address)
    yield scheduler, scheduler_pb2_grpc.SchedulerServiceStub(channel)
    channel.close()
    worker.stop()
    scheduler.stop()


def _call(fn, request) -> None:
    """Makes the call; any gRPC status is an answer. A stream is read a little, then cancelled."""
    try:
        result = fn(request, timeout=5)
        if hasattr(result, "cancel"):
            for index, _ in enumerate(result):
                if index >= 2:
                    break
            result.cancel()
    except grpc.RpcError as err:
        assert err.code() is not grpc.StatusCode.UNKNOWN, err.details()
        assert err.code() is not grpc.StatusCode.INTERNAL or "Traceback" not in (err.details() or "")


def _fuzz(stub, rpc: str, request_cls, calls: int) -> int:
    """Sends generated requests to `rpc`; returns how many were sent."""
    sent = [0]

    @settings(
        max_examples=calls,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(messages(request_cls.DESCRIPTOR))
    def one(values):
        try:
            request = build(request_cls, values)
        except (ValueError, TypeError, OverflowError):
            return  # protobuf itself refuses the value: nothing reaches the server
        sent[0] += 1
        _call(getattr(stub, rpc), request)

    one()
    return sent[0]


@pytest.mark.parametrize(
    "rpc, request_cls, calls",
    [
        # Over 2,000 generated calls in all; requests without fields have one shape only.
        ("Submit", scheduler_pb2.SubmitRequest, 1600),
        ("Abort", scheduler_pb2.AbortRequest, 500),
        ("GetLoad", scheduler_pb2.GetLoadRequest, 1),
        ("GetModelInfo", scheduler_pb2.GetModelInfoRequest, 1),
    ],
)
def test_scheduler_answers_every_generated_request_with_a_status(fuzzed_scheduler, rpc, request_cls, calls):
    scheduler, stub = fuzzed_scheduler
    sent = _fuzz(stub, rpc, request_cls, calls)
    assert sent >= calls // 2, f"only {sent} generated requests were valid protobuf"
    assert "Traceback" not in scheduler.output_tail(2000), scheduler.output_tail(2000)
    # A normal request after the storm is answered right, and every block comes back.
    tokens = [t for m in stub.Submit(submit_request("after", [3, 4, 5], 4), timeout=30) for t in m.token_ids]
    assert tokens == expected_tokens([3, 4, 5], 4)
    wait_all_blocks_free(stub, timeout_s=30)
