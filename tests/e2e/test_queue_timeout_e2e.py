"""queue_timeout_ms end to end: a scheduler whose one running slot and one-entry queue are full
(queue_overflow_policy=block) answers, through a real frontend, an HTTP request carrying
queue_timeout_ms (body field or x-queue-timeout-ms header) with 429 and Retry-After once that long
has passed, and a gRPC request with RESOURCE_EXHAUSTED; nothing is left queued or held."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from infermesh.v1 import frontend_pb2, scheduler_pb2
from infermesh_cli.local_cluster import LocalCluster

from tests.e2e.harness import (
    frontend_stub,
    generate_request,
    scheduler_stub,
    start_cluster,
    wait_all_blocks_free,
)
from tests.free_port import free_port

pytestmark = pytest.mark.e2e

QUEUE_TIMEOUT_MS = 400


@pytest.fixture(scope="module")
def full_cluster(
    llama_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalCluster, str]]:
    http_port = free_port()
    cluster = start_cluster(
        llama_model,
        tmp_path_factory.mktemp("queue-timeout-logs"),
        scheduler_args=[
            *("--dtype", "fp32", "--total-blocks", "512"),
            *("--max-batch-size", "1", "--max-queue-size", "1", "--queue-overflow-policy", "block"),
        ],
        frontend_args=["--http-port", str(http_port)],
    )
    try:
        yield cluster, f"http://127.0.0.1:{http_port}"
    finally:
        cluster.stop()


def _read_until_cancelled(call) -> None:
    try:
        for _ in call:
            pass
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.CANCELLED, err.details()


def _occupy(cluster: LocalCluster) -> list[grpc.Future]:
    """One long stream running and one waiting: the scheduler has no room for a third request."""
    stub = frontend_stub(cluster.frontend_address)
    calls = []
    for text in ("running for a while", "waiting behind it"):
        request = frontend_pb2.GenerateStreamRequest(
            input=generate_request(text=text, max_tokens=900, temperature=0, ignore_eos=True)
        )
        call = stub.GenerateStream(request, timeout=300)
        threading.Thread(target=_read_until_cancelled, args=(call,), daemon=True).start()
        calls.append(call)
    scheduler = scheduler_stub(cluster.scheduler_address)
    deadline = time.monotonic() + 60
    while True:
        load = scheduler.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5)
        if load.num_running == 1 and load.num_waiting == 1:
            return calls
        assert time.monotonic() < deadline, f"the scheduler never filled up: {load}"
        time.sleep(0.02)


def test_a_full_queue_answers_429_with_retry_after_or_resource_exhausted(full_cluster):
    cluster, base_url = full_cluster
    model = httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": "impatient", "max_tokens": 4, "temperature": 0}
    calls = _occupy(cluster)
    try:
        for extra, headers in (
            ({"queue_timeout_ms": QUEUE_TIMEOUT_MS}, {}),
            ({}, {"x-queue-timeout-ms": str(QUEUE_TIMEOUT_MS)}),
        ):
            started = time.monotonic()
            response = httpx.post(
                f"{base_url}/v1/completions", json={**body, **extra}, headers=headers, timeout=60
            )
            assert time.monotonic() - started >= QUEUE_TIMEOUT_MS / 1000  # it waited for room that long
            assert response.status_code == 429, response.text
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert "queue_timeout_ms" in response.json()["error"]["message"]

        request = frontend_pb2.GenerateRequest(
            input=generate_request(text="impatient", max_tokens=4, temperature=0)
        )
        request.input.queue_timeout_ms = QUEUE_TIMEOUT_MS
        with pytest.raises(grpc.RpcError) as refused:
            frontend_stub(cluster.frontend_address).Generate(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert f"queue_timeout_ms={QUEUE_TIMEOUT_MS}" in refused.value.details()

        # non_blocking: the same refusal at once, without waiting.
        request.input.queue_timeout_ms = 0
        request.input.non_blocking = True
        with pytest.raises(grpc.RpcError) as refused:
            frontend_stub(cluster.frontend_address).Generate(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
    finally:
        for call in calls:
            call.cancel()
    wait_all_blocks_free(cluster.scheduler_address, timeout_s=60)
