"""The scheduler process: no torch stack imported, orderly SIGTERM, refusals at startup."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from infermesh.v1 import scheduler_pb2_grpc

from tests.scheduler_service.service_harness import (
    MAX_POSITIONS,
    load,
    start_fake_worker,
    start_scheduler,
    submit_request,
)

pytestmark = pytest.mark.e2e


def test_scheduler_never_imports_the_torch_stack():
    code = (
        "import sys, infermesh_scheduler.__main__, infermesh_scheduler.server; "
        "bad = sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_max_model_len_beyond_the_model_is_refused_at_startup(model_dir):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infermesh_scheduler",
            "--port",
            "0",
            "--model-path",
            str(model_dir),
            "--max-model-len",
            str(MAX_POSITIONS * 2),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_model_len" in result.stderr and str(MAX_POSITIONS) in result.stderr


def test_sigterm_ends_live_streams_with_unavailable_and_exits(model_dir):
    # drain_timeout_s 0: what a drain shorter than the streams leaves them (the frontend fails over).
    scheduler = start_scheduler(
        model_dir, "--total-blocks", "64", "--block-size", "4", "--drain-timeout-s", "0"
    )
    worker = None
    try:
        worker = start_fake_worker(scheduler.address, "t0", "--step-delay-ms", "10")
        with grpc.insecure_channel(scheduler.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            outcome: dict = {}

            def stream() -> None:
                try:
                    outcome["responses"] = list(
                        stub.Submit(submit_request("term", [5], 200, ignore_eos=True), timeout=30)
                    )
                except grpc.RpcError as err:
                    outcome["error"] = err

            thread = threading.Thread(target=stream)
            thread.start()
            deadline = time.monotonic() + 10
            while load(stub).num_running < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            scheduler.process.send_signal(signal.SIGTERM)
            thread.join(20)
            assert outcome["error"].code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in outcome["error"].details()
        assert scheduler.process.wait(20) == 0
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


def test_sigterm_drains_running_streams_and_refuses_new_ones(model_dir):
    scheduler = start_scheduler(
        model_dir, "--total-blocks", "64", "--block-size", "4", "--drain-timeout-s", "60"
    )
    worker = None
    try:
        worker = start_fake_worker(scheduler.address, "t0", "--step-delay-ms", "10")
        with grpc.insecure_channel(scheduler.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            outcome: dict = {}

            def stream() -> None:
                outcome["responses"] = list(
                    stub.Submit(submit_request("drained", [5], 200, ignore_eos=True), timeout=60)
                )

            thread = threading.Thread(target=stream)
            thread.start()
            deadline = time.monotonic() + 10
            while load(stub).num_running < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            scheduler.process.send_signal(signal.SIGTERM)
            # New work is refused at once with UNAVAILABLE: the frontend places it on another replica.
            deadline = time.monotonic() + 10
            while True:
                try:
                    list(stub.Submit(submit_request("late", [5], 4), timeout=10))
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.details()
                    break
                assert time.monotonic() < deadline, "Submit still admitted 10 s after SIGTERM"
            thread.join(60)
            tokens = sum(len(r.token_ids) for r in outcome["responses"])
            assert tokens == 200 and outcome["responses"][-1].HasField("usage")
        assert scheduler.process.wait(20) == 0
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


def test_port_in_use_is_refused(model_dir):
    first = start_scheduler(model_dir)
    try:
        port = first.address.rsplit(":", 1)[1]
        result = subprocess.run(
            [sys.executable, "-m", "infermesh_scheduler", "--port", port, "--model-path", str(model_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    finally:
        first.stop()
