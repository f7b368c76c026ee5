"""A worker that comes back is taken back, and the streams it served finish as if nothing happened.

Two ways back, both with a real scheduler and real worker processes:
- killed with SIGKILL and restarted on the SAME fixed port (a container restart): the scheduler must
  dial it on a fresh connection, not inherit the dead one's "connection refused";
- frozen (SIGSTOP) until the scheduler drops it, then thawed: the worker learns from CheckWorker that
  it is unknown and registers again by itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest
from infermesh.v1 import scheduler_pb2_grpc
from infermesh_cli.local_cluster import ServiceProcess

from tests.free_port import free_port
from tests.model_factory import build_random_model
from tests.scheduler_service.service_harness import (
    start_real_worker,
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = [5, 17, 33, 8]
MAX_TOKENS = 400


def _worker(scheduler_address: str, port: int) -> ServiceProcess:
    return start_real_worker(scheduler_address, "w0", "--scheduler-probe-interval-ms", "200", port=port)


class _Stream:
    """One greedy request streamed on a thread; counts tokens as they arrive."""

    def __init__(self, stub, request_id: str) -> None:
        self.tokens: list[int] = []
        self.error: grpc.RpcError | None = None
        request = submit_request(request_id, PROMPT, MAX_TOKENS, temperature=0.0, ignore_eos=True)
        self._thread = threading.Thread(target=self._run, args=(stub, request), daemon=True)
        self._thread.start()

    def _run(self, stub, request) -> None:
        try:
            for message in stub.Submit(request, timeout=120):
                self.tokens.extend(message.token_ids)
        except grpc.RpcError as err:
            self.error = err

    def wait_tokens(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.tokens) < count and self._thread.is_alive():
            assert time.monotonic() < deadline, f"only {len(self.tokens)} tokens after 60s"
            time.sleep(0.002)

    def result(self) -> list[int]:
        self._thread.join(130)
        assert self.error is None, f"{self.error.code().name}: {self.error.details()}"
        return self.tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(
        "llama", tmp_path_factory.mktemp("model"), vocab_size=256, max_position_embeddings=512
    )


def test_worker_killed_and_restarted_on_its_port_is_readmitted_and_streams_finish_identical(model_dir):
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        "128",
        "--worker-timeout-ms",
        "3000",
        "--group-recovery-timeout-ms",
        "60000",
    )
    port = free_port()
    worker = _worker(scheduler.address, port)
    try:
        with grpc.insecure_channel(scheduler.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            expected = _Stream(stub, "undisturbed").result()
            assert len(expected) == MAX_TOKENS

            streams = [_Stream(stub, f"killed-{i}") for i in range(3)]
            streams[0].wait_tokens(20)
            worker.kill()
            worker = _worker(scheduler.address, port)
            for stream in streams:
                assert stream.result() == expected
            # Taken back on its first registration: the old connection's failure is not inherited.
            assert "forming the worker group failed" not in scheduler.output_tail(400)
            wait_all_blocks_free(stub)
    finally:
        worker.stop()
        scheduler.stop()


def test_worker_dropped_by_its_scheduler_registers_again_by_itself(model_dir):
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        "128",
        "--worker-timeout-ms",
        "600",
        "--group-recovery-timeout-ms",
        "60000",
    )
    worker = _worker(scheduler.address, 0)
    try:
        with grpc.insecure_channel(scheduler.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            expected = _Stream(stub, "undisturbed").result()
            stream = _Stream(stub, "frozen")
            stream.wait_tokens(20)
            os.kill(worker.process.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 30
            while "does not answer: dropped" not in scheduler.output_tail(200):
                assert time.monotonic() < deadline, scheduler.output_tail()
                time.sleep(0.05)
            os.kill(worker.process.pid, signal.SIGCONT)
            assert stream.result() == expected
            assert "does not know this worker" in worker.output_tail(200)
            wait_all_blocks_free(stub)
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
        worker.stop()
        scheduler.stop()
