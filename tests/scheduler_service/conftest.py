"""Fixtures: a scheduler process with one fake worker, both stopped after the tests."""

from __future__ import annotations

import grpc
import pytest
from infermesh.v1 import scheduler_pb2_grpc

from tests.scheduler_service.service_harness import (
    assert_no_plan_errors,
    start_fake_worker,
    start_scheduler,
    wait_all_blocks_free,
    write_tiny_llama,
)

TOTAL_BLOCKS = 160
BLOCK_SIZE = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def served(model_dir):
    """(scheduler, worker) processes serving together."""
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        str(TOTAL_BLOCKS),
        "--block-size",
        str(BLOCK_SIZE),
        "--max-batch-size",
        "64",
        "--worker-timeout-ms",
        "5000",
        "--enable-cow",
    )
    worker = None
    try:
        worker = start_fake_worker(scheduler.address, "fake-0")
        yield scheduler, worker
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served[0].address) as ch:
        yield ch


@pytest.fixture
def stub(channel, served):
    """A SchedulerService stub; after the test every block is back and every plan was consistent."""
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    yield stub
    wait_all_blocks_free(stub)
    assert_no_plan_errors(served[1])
