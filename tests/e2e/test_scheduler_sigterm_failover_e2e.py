"""SIGTERM to one of two scheduler replicas behind a frontend, with streams in flight and no
rescheduler: the replica stops admitting at once (new requests land on the other one), hands back
what its short drain did not finish, and the frontend fails those streams over; every stream ends
with the greedy tokens of an undisturbed run and no block is left held on the surviving replica."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
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

pytestmark = pytest.mark.e2e

STREAMS = 8
MAX_TOKENS = 400  # longer than the drain, so the leaving replica hands streams back
DRAIN_TIMEOUT_S = 0.5  # shorter than the streams: the rest is handed back to the frontend


@pytest.fixture(scope="module")
def two_replicas(llama_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(
        llama_model,
        tmp_path_factory.mktemp("sigterm-failover-logs"),
        replicas=2,
        scheduler_args=[
            *("--dtype", "fp32", "--total-blocks", "512", "--max-batch-size", "64"),
            *("--drain-timeout-s", str(DRAIN_TIMEOUT_S)),
        ],
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def _greedy_request(index: int) -> frontend_pb2.GenerateInput:
    return generate_request(
        text=f"Stream {index} once upon a time", max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True
    )


def _stream(address: str, index: int, results: dict, started: threading.Event) -> None:
    tokens: list[int] = []
    try:
        request = frontend_pb2.GenerateStreamRequest(input=_greedy_request(index))
        for message in frontend_stub(address).GenerateStream(request, timeout=240):
            tokens.extend(message.token_ids)
            started.set()
        results[index] = ("OK", tokens)
    except grpc.RpcError as err:
        results[index] = (f"{err.code().name}: {err.details()}", tokens)
    finally:
        started.set()


def _running(address: str) -> int:
    return scheduler_stub(address).GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5).num_running


def test_sigterm_to_a_replica_fails_its_streams_over_with_the_same_tokens(two_replicas):
    cluster = two_replicas
    frontend = frontend_stub(cluster.frontend_address)
    reference = {
        i: list(
            frontend.Generate(frontend_pb2.GenerateRequest(input=_greedy_request(i)), timeout=120)
            .completions[0]
            .token_ids
        )
        for i in range(STREAMS)
    }
    survivor, leaving = cluster.scheduler_addresses
    results: dict[int, tuple[str, list[int]]] = {}
    started = [threading.Event() for _ in range(STREAMS)]
    threads = [
        threading.Thread(target=_stream, args=(cluster.frontend_address, i, results, started[i]), daemon=True)
        for i in range(STREAMS)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while not (_running(leaving) and _running(survivor) and all(e.is_set() for e in started)):
        assert time.monotonic() < deadline, "the streams never ran on both replicas at once"
        assert not results, f"a stream ended before the SIGTERM: {results}"
        time.sleep(0.02)
    on_leaving = _running(leaving)
    cluster.schedulers[1].process.send_signal(signal.SIGTERM)

    # New work while it drains lands on the other replica.
    after = frontend.Generate(frontend_pb2.GenerateRequest(input=_greedy_request(0)), timeout=120)
    assert list(after.completions[0].token_ids) == reference[0]

    for thread in threads:
        thread.join(240)
    assert cluster.schedulers[1].process.wait(60) == 0
    assert {i: r[0] for i, r in results.items()} == dict.fromkeys(range(STREAMS), "OK"), results
    for i in range(STREAMS):
        assert results[i][1] == reference[i], f"stream {i} differs after the failover"
    assert on_leaving >= 1
    # The drain was shorter than the streams: some were handed back mid-stream and failed over.
    frontend_log = (cluster.spec.log_dir / "frontend-0.log").read_text()
    assert "goes on at another replica" in frontend_log, frontend_log[-3000:]
    assert "Traceback" not in frontend_log
    wait_all_blocks_free(survivor, timeout_s=60)
