"""The scheduler process: no torch stack imported, orderly SIGTERM, refusals at startup."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
import pytest

from tests.scheduler_service.service_harness import (
    MAX_POSITIONS,
    StreamThread,
    run_scheduler_to_exit,
    scheduler_with_fake_worker,
    start_scheduler,
    submit_request,
    wait_running,
)

pytestmark = pytest.mark.e2e

_POOL = ("--total-blocks", "64", "--block-size", "4")


def test_scheduler_never_imports_the_torch_stack():
    code = (
        "import sys, infermesh_scheduler.__main__, infermesh_scheduler.server; "
        "bad = sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_max_model_len_beyond_the_model_is_refused_at_startup(model_dir):
    result = run_scheduler_to_exit(model_dir, "--port", "0", "--max-model-len", str(MAX_POSITIONS * 2))
    assert result.returncode == 2
    assert "max_model_len" in result.stderr and str(MAX_POSITIONS) in result.stderr


def test_sigterm_ends_live_streams_with_unavailable_and_exits(model_dir):
    # drain_timeout_s 0: what a drain shorter than the streams leaves them (the frontend fails over).
    with scheduler_with_fake_worker(
        model_dir, *_POOL, "--drain-timeout-s", "0", worker_args=("--step-delay-ms", "10")
    ) as (scheduler, stub):
        stream = StreamThread(stub, submit_request("term", [5], 200, ignore_eos=True), timeout_s=30)
        wait_running(stub)
        scheduler.process.send_signal(signal.SIGTERM)
        stream.join(20)
        assert stream.error is not None and stream.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in stream.error.details()
        assert scheduler.process.wait(20) == 0


def test_sigterm_drains_running_streams_and_refuses_new_ones(model_dir):
    with scheduler_with_fake_worker(
        model_dir, *_POOL, "--drain-timeout-s", "60", worker_args=("--step-delay-ms", "10")
    ) as (scheduler, stub):
        stream = StreamThread(stub, submit_request("drained", [5], 200, ignore_eos=True), timeout_s=60)
        wait_running(stub)
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
        stream.join(60)
        assert stream.error is None, stream.error
        tokens = sum(len(r.token_ids) for r in stream.responses)
        assert tokens == 200 and stream.responses[-1].HasField("usage")
        assert scheduler.process.wait(20) == 0


def test_port_in_use_is_refused(model_dir):
    first = start_scheduler(model_dir)
    try:
        port = first.address.rsplit(":", 1)[1]
        result = run_scheduler_to_exit(model_dir, "--port", port)
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    finally:
        first.stop()
