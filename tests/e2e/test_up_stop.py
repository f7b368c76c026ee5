"""Stopping `infermesh up`: SIGTERM lets the services drain what is in flight (each up to its
drain_timeout_s, not a fixed 10 s) and `up` exits 0; a second Ctrl-C stops everything at once."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc
import pytest
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
from infermesh_shared.grpc_transport import open_channel

from tests.e2e.up_cluster import UpCluster, up_cluster

pytestmark = pytest.mark.e2e

# Streams long enough to outlive the 10 s `up` used to give a service before SIGKILL (they run
# 10-30 s after SIGTERM here, sharing the one worker).
_LONG_STREAM_TOKENS = 1800
_STREAMS = 3


def _stream(cluster: UpCluster, max_tokens: int, outcome: dict, first_token: threading.Event) -> None:
    sampling = frontend_pb2.ClientSamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    request = frontend_pb2.GenerateStreamRequest(
        input=frontend_pb2.GenerateInput(text="Once upon a time", sampling=sampling)
    )
    tokens: list[int] = []
    finish = None
    try:
        with open_channel(cluster.frontend_address) as channel:
            for chunk in frontend_pb2_grpc.FrontendServiceStub(channel).GenerateStream(request, timeout=300):
                tokens.extend(chunk.token_ids)
                first_token.set()
                finish = chunk.finish_reason or finish
        outcome["status"] = "OK"
    except grpc.RpcError as err:
        outcome["status"] = err.code().name
    outcome.update(tokens=len(tokens), finish=finish, ended=time.monotonic())
    first_token.set()


def _start_stream(cluster: UpCluster, max_tokens: int) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    first_token = threading.Event()
    thread = threading.Thread(target=_stream, args=(cluster, max_tokens, outcome, first_token), daemon=True)
    thread.start()
    assert first_token.wait(120), "the stream never started"
    assert "status" not in outcome, outcome
    return thread, outcome


def _output(process: subprocess.Popen) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return lines


def test_sigterm_lets_a_stream_in_flight_finish_and_up_exits_0(tmp_path):
    with up_cluster(tmp_path, "--http-port", "0", "--frontend-arg=--drain-timeout-s=120") as cluster:
        output = _output(cluster.process)
        streams = [_start_stream(cluster, _LONG_STREAM_TOKENS) for _ in range(_STREAMS)]
        sent = time.monotonic()
        cluster.process.send_signal(signal.SIGTERM)
        for thread, outcome in streams:
            thread.join(300)
            assert outcome["status"] == "OK", outcome
            assert outcome["tokens"] == _LONG_STREAM_TOKENS, outcome
        assert cluster.process.wait(120) == 0, "".join(output)
        print(f"the streams ran {max(o['ended'] for _, o in streams) - sent:.1f}s after SIGTERM")
        assert any("stopped" in line for line in output), "".join(output)


def test_a_second_interrupt_stops_at_once(tmp_path):
    with up_cluster(tmp_path, "--http-port", "0", "--frontend-arg=--drain-timeout-s=600") as cluster:
        output = _output(cluster.process)
        thread, outcome = _start_stream(cluster, _LONG_STREAM_TOKENS)
        cluster.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while not any("Ctrl-C again" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.05)
        # The frontend drains (up to 600 s); the second Ctrl-C does not wait for it.
        cluster.process.send_signal(signal.SIGINT)
        assert cluster.process.wait(30) == 130, "".join(output)
        thread.join(30)
        assert outcome["status"] != "OK", outcome
