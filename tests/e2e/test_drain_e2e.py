"""SIGTERM to a frontend with streams in flight (real processes): the streams finish within
drain_timeout_s; with a shorter timeout each ends with the documented status (gRPC UNAVAILABLE
"server shutting down"; SSE an error event, then data: [DONE]). Every KV block is free after."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh.v1 import common_pb2, frontend_pb2
from infermesh_cli.local_cluster import LocalCluster, ServiceProcess

from tests.e2e.harness import frontend_stub, generate_request, start_cluster, wait_all_blocks_free
from tests.free_port import free_port

pytestmark = pytest.mark.e2e

STREAMS_PER_API = 8  # 16 in flight: 8 gRPC, 8 SSE
PROMPT = "Once upon a time"
MAX_TOKENS = 160  # long enough that the streams still run while the test probes the draining frontend


@pytest.fixture(scope="module")
def cluster(llama_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = start_cluster(
        llama_model,
        tmp_path_factory.mktemp("drain-logs"),
        scheduler_args=["--dtype", "fp32", "--total-blocks", "512", "--max-batch-size", "64"],
    )
    try:
        yield running
    finally:
        running.stop()


@dataclass
class StreamResult:
    tokens: int = 0
    finish_reason: str = ""
    error: str = ""  # gRPC "CODE: details", or the SSE error event's message
    done: bool = False  # SSE: data: [DONE] arrived
    started: threading.Event = field(default_factory=threading.Event)


def _grpc_stream(address: str, max_tokens: int, result: StreamResult) -> None:
    request = frontend_pb2.GenerateStreamRequest(
        input=generate_request(text=PROMPT, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    )
    try:
        for message in frontend_stub(address).GenerateStream(request, timeout=120):
            result.tokens += len(message.token_ids)
            result.started.set()
            if message.finish_reason:
                result.finish_reason = common_pb2.FinishReason.Name(message.finish_reason)
    except grpc.RpcError as error:
        result.error = f"{error.code().name}: {error.details()}"
    finally:
        result.started.set()


def _sse_stream(base_url: str, model: str, max_tokens: int, result: StreamResult) -> None:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                assert not result.done, "an event after data: [DONE]"
                if data == "[DONE]":
                    result.done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    result.error = event["error"]["message"]
                    continue
                result.started.set()
                if event.get("usage"):
                    result.tokens = event["usage"]["completion_tokens"]
                for choice in event["choices"]:
                    result.finish_reason = choice.get("finish_reason") or result.finish_reason
    except httpx.HTTPError as error:
        result.error = f"transport: {error!r}"
    finally:
        result.started.set()


def _drain_frontend(
    cluster: LocalCluster, drain_timeout_s: float, max_tokens: int, check_refusals: bool = False
) -> tuple[list[StreamResult], list[StreamResult], float, int]:
    """A fresh frontend with HTTP on, 16 streams on it, SIGTERM once every one has a token.
    Returns (gRPC results, SSE results, seconds from SIGTERM to the process's exit, exit code)."""
    http_port = free_port()
    cluster.spec.frontend_args = ["--http-port", str(http_port), "--drain-timeout-s", str(drain_timeout_s)]
    frontend: ServiceProcess = cluster.start_frontend()
    base_url = f"http://127.0.0.1:{http_port}"
    model = httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
    grpc_results = [StreamResult() for _ in range(STREAMS_PER_API)]
    sse_results = [StreamResult() for _ in range(STREAMS_PER_API)]
    threads = [
        threading.Thread(target=_grpc_stream, args=(frontend.address, max_tokens, r), daemon=True)
        for r in grpc_results
    ]
    threads += [
        threading.Thread(target=_sse_stream, args=(base_url, model, max_tokens, r), daemon=True)
        for r in sse_results
    ]
    for thread in threads:
        thread.start()
    for result in grpc_results + sse_results:
        assert result.started.wait(120), "a stream never started"
    assert not any(r.error for r in grpc_results + sse_results), [r.error for r in grpc_results + sse_results]
    sent = time.monotonic()
    frontend.process.send_signal(signal.SIGTERM)
    if check_refusals:
        _assert_refuses_new_work(frontend.address, base_url, model)
    exit_code = frontend.process.wait(drain_timeout_s + 60)
    took = time.monotonic() - sent
    for thread in threads:
        thread.join(30)
    return grpc_results, sse_results, took, exit_code


def _assert_refuses_new_work(address: str, base_url: str, model: str) -> None:
    """While it drains: health NOT_SERVING, a new request UNAVAILABLE / 503 with Retry-After."""
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + 10
    serving = health_pb2.HealthCheckResponse.SERVING
    while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving:
        assert time.monotonic() < deadline, "still SERVING 10 s after SIGTERM"
        time.sleep(0.02)
    with pytest.raises(grpc.RpcError) as refused:
        frontend_stub(address).Generate(
            frontend_pb2.GenerateRequest(input=generate_request(text=PROMPT, max_tokens=4)), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "server shutting down"
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=10)
    assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
    assert response.json()["error"]["message"] == "server shutting down"


def test_sigterm_lets_every_stream_finish_within_the_drain_timeout(cluster: LocalCluster) -> None:
    drain_timeout_s = 120.0
    grpc_results, sse_results, took, exit_code = _drain_frontend(
        cluster, drain_timeout_s, max_tokens=MAX_TOKENS, check_refusals=True
    )
    assert exit_code == 0
    assert took < drain_timeout_s
    for result in grpc_results + sse_results:
        assert (result.error, result.tokens) == ("", MAX_TOKENS)
    assert {r.finish_reason for r in grpc_results} == {"FINISH_REASON_LENGTH"}
    assert {r.finish_reason for r in sse_results} == {"length"}
    assert all(r.done for r in sse_results)
    wait_all_blocks_free(cluster.scheduler_address)


def test_streams_longer_than_the_drain_end_with_shutting_down(cluster: LocalCluster) -> None:
    grpc_results, sse_results, _, exit_code = _drain_frontend(cluster, drain_timeout_s=0.5, max_tokens=400)
    assert exit_code == 0
    for result in grpc_results:
        assert result.error == "UNAVAILABLE: server shutting down" and result.tokens < 400
    for result in sse_results:
        # The OpenAI-shaped error event, then data: [DONE]; no finish reason.
        assert (result.error, result.done, result.finish_reason) == ("server shutting down", True, "")
    wait_all_blocks_free(cluster.scheduler_address)
