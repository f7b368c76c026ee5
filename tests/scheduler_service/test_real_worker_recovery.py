"""The scheduler with real infermesh-worker processes (tp=2 over gloo, one standby): a member is
killed mid-stream, the standby joins a fresh process group, and the stream finishes with exactly
the tokens an undisturbed run produces."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from infermesh.v1 import scheduler_pb2_grpc
from infermesh_cli.local_cluster import ServiceProcess

from tests.model_factory import build_random_model
from tests.scheduler_service.service_harness import (
    load,
    start_real_worker,
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
)

pytestmark = [pytest.mark.e2e, pytest.mark.multiproc, pytest.mark.slow]

PROMPT = [5, 17, 33, 8]
MAX_TOKENS = 60


def test_tp2_member_killed_mid_stream_standby_takes_over(tmp_path):
    model_dir = build_random_model("llama", tmp_path / "model", vocab_size=256, max_position_embeddings=256)
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        "64",
        "--block-size",
        "8",
        "--tp-size",
        "2",
        "--num-workers",
        "3",
        "--worker-timeout-ms",
        "10000",
        "--group-recovery-timeout-ms",
        "30000",
    )
    workers: list[ServiceProcess] = []
    try:
        workers += [start_real_worker(scheduler.address, f"rw{i}", wait=False) for i in range(2)]
        for w in workers:
            w.wait_listening(60)
        with grpc.insecure_channel(scheduler.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            reference = [
                t
                for r in stub.Submit(submit_request("ref", PROMPT, MAX_TOKENS, ignore_eos=True), timeout=120)
                for t in r.token_ids
            ]
            assert len(reference) == MAX_TOKENS
            workers.append(start_real_worker(scheduler.address, "rw2", wait=False))  # the standby
            workers[2].wait_listening(60)
            received: list[int] = []
            outcome: dict = {}

            def stream() -> None:
                try:
                    call = stub.Submit(
                        submit_request("hit", PROMPT, MAX_TOKENS, ignore_eos=True), timeout=120
                    )
                    for response in call:
                        received.extend(response.token_ids)
                    outcome["done"] = True
                except grpc.RpcError as err:
                    outcome["error"] = err

            thread = threading.Thread(target=stream)
            thread.start()
            deadline = time.monotonic() + 60
            while len(received) < 5:
                assert time.monotonic() < deadline and thread.is_alive(), outcome
                time.sleep(0.01)
            workers[1].kill()
            thread.join(120)
            assert outcome.get("done"), outcome
            assert received == reference
            assert "tp=1/2" in workers[2].output_tail(100)  # the standby took rank 1
            wait_all_blocks_free(stub)
            assert load(stub).serving
    finally:
        for w in workers:
            w.stop()
        scheduler.stop()
