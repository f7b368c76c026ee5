"""The rescheduler in real processes: `infermesh up --replicas 2` with the colocated rescheduler
(--rescheduler-arg), every stream pinned to one replica A by a shared session id.

- decode_load moves some of 16 running greedy streams to B: each stream's tokens equal an
  undisturbed run (transformers), nothing is recomputed (no frontend failover, no preemption, B
  prefills nothing), and A's blocks are all free after;
- `infermesh drain --replica A --address FRONTEND` moves 8 streams in flight to B, same checks;
- SIGTERM to A's scheduler with 8 streams in flight: the rescheduler migrates them away while A
  drains (drain by migration), same checks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from infermesh_shared.grpc_transport import open_channel

from tests.e2e.up_cluster import UpCluster, up_cluster
from tests.free_port import free_port
from tests.model_factory import transformers_greedy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SESSION = "pinned"
# Balance by request count: A is a source at >= 10 live requests and B a destination below it, so
# 16 streams trigger moves and 8 do not (the drain tests then see only their own moves).
RESCHEDULER_ARGS = [
    "enable_rescheduling=true",
    "rescheduling_policies=decode_load,neutral_failover",
    "rescheduling_interval_ms=100",
    "rescheduling_decode_load_metric=num_requests",
    "rescheduling_decode_load_threshold=10",
    "rescheduling_load_balance_threshold=2",
    "rescheduling_req_select_rule=NUM_REQ",
    "rescheduling_req_select_value=2",
]
# Long enough that all 8 streams still run when the drain reaches them, on a busy machine.
DRAINED_TOKENS = 400


def _prompt(index: int) -> list[int]:
    return [7 + index, 40, 3 * index + 11, 200, 5, 90 + index, 17, 33]


class _Cluster:
    def __init__(self, up: UpCluster, metrics_port: int, model_dir: Path) -> None:
        self.up = up
        self.metrics_port = metrics_port
        self.model_dir = model_dir
        self.replicas = [up.announced("scheduler", "scheduler"), up.announced("scheduler-1", "scheduler")]
        self._expected: dict[tuple[int, int], list[int]] = {}
        self._lock = threading.Lock()

    def prefetch(self, wanted: list[tuple[int, int]]) -> threading.Thread:
        """Computes reference tokens in the background while the streams run (they cost more
        than the streams on a busy machine)."""

        def work() -> None:
            for index, max_tokens in wanted:
                self.expected(index, max_tokens)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread

    def load(self, address: str) -> scheduler_pb2.GetLoadResponse:
        with open_channel(address, self.up.role_tls("frontend"), server_role="scheduler") as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            return stub.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=10)

    def frontend_metric(self, name: str, **labels: str) -> float:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def expected(self, index: int, max_tokens: int) -> list[int]:
        key = (index, max_tokens)
        with self._lock:
            if key not in self._expected:
                self._expected[key] = transformers_greedy(self.model_dir, _prompt(index), max_tokens)
            return self._expected[key]

    def wait_free(self, address: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            load = self.load(address)
            idle = load.num_running == 0 and load.num_waiting == 0 and load.num_preempted == 0
            if idle and load.free_blocks + load.cached_blocks == load.total_blocks:
                return
            assert time.monotonic() < deadline, f"blocks of {address} not free: {load}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(llama_model, tmp_path_factory):
    metrics_port = free_port()
    args = [
        str(llama_model),
        "--replicas",
        "2",
        "--http-port",
        "0",
        "--dtype",
        "fp32",
        "--scheduler-arg=--total-blocks=1024",
        "--scheduler-arg=--block-size=4",
        "--frontend-arg=--dispatch-policy=session",
        f"--frontend-arg=--metrics-port={metrics_port}",
        *[f"--rescheduler-arg={arg}" for arg in RESCHEDULER_ARGS],
    ]
    with up_cluster(tmp_path_factory.mktemp("rescheduling"), *args) as up:
        cluster = _Cluster(up, metrics_port, llama_model)
        cluster.prefetch([(i, 96) for i in range(16)] + [(i, DRAINED_TOKENS) for i in range(16, 24)])
        yield cluster


def _stream(address: str, index: int, max_tokens: int, results: dict, progress: dict) -> None:
    sampling = frontend_pb2.ClientSamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    request = frontend_pb2.GenerateStreamRequest(
        input=frontend_pb2.GenerateInput(
            token_ids=frontend_pb2.TokenIds(ids=_prompt(index)), sampling=sampling, session_id=SESSION
        )
    )
    tokens: list[int] = []
    try:
        with open_channel(address) as channel:
            for chunk in frontend_pb2_grpc.FrontendServiceStub(channel).GenerateStream(request, timeout=180):
                tokens.extend(chunk.token_ids)
                progress[index] = len(tokens)
        results[index] = ("OK", tokens)
    except grpc.RpcError as err:
        results[index] = (f"{err.code().name}: {err.details()}", tokens)


def _start_streams(cluster: _Cluster, count: int, max_tokens: int, first: int = 0):
    results: dict = {}
    progress: dict = {}
    threads = [
        threading.Thread(target=_stream, args=(cluster.up.frontend_address, i, max_tokens, results, progress))
        for i in range(first, first + count)
    ]
    for thread in threads:
        thread.start()
    return threads, results, progress


def _wait_started(progress: dict, indexes: range, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(progress.get(i, 0) < 3 for i in indexes):
        assert time.monotonic() < deadline, f"streams did not start: {progress}"
        time.sleep(0.02)


def _check_streams(cluster: _Cluster, threads, results: dict, indexes: range, max_tokens: int) -> None:
    for thread in threads:
        thread.join(180)
    for i in indexes:
        status, tokens = results[i]
        assert status == "OK", (i, status)
        assert tokens == cluster.expected(i, max_tokens), i


def _prefilled(cluster: _Cluster) -> dict[str, int]:
    """Prompt tokens each replica admitted (looked up in its prefix cache) since it started."""
    return {address: cluster.load(address).prefix_cache_queries for address in cluster.replicas}


def _pinned_replica(before: dict[str, int], after: dict[str, int]) -> tuple[str, str]:
    grew = [address for address in before if after[address] > before[address]]
    assert len(grew) == 1, (before, after)
    other = next(address for address in before if address != grew[0])
    return grew[0], other


def test_decode_load_moves_running_streams_to_the_idle_replica_without_recompute(cluster):
    before = _prefilled(cluster)
    threads, results, _ = _start_streams(cluster, 16, 96)
    _check_streams(cluster, threads, results, range(16), 96)
    after = _prefilled(cluster)
    source, destination = _pinned_replica(before, after)
    assert after[source] - before[source] == 16 * len(_prompt(0))  # every prompt prefilled once, on A
    assert after[destination] == before[destination]  # B computed no prompt: it adopted KV
    assert (
        cluster.frontend_metric(
            "infermesh_rescheduler_migrations_total", policy="decode_load", outcome="migrated"
        )
        >= 1
    )
    assert cluster.frontend_metric("infermesh_frontend_failovers_total") == 0
    for address in cluster.replicas:
        assert cluster.load(address).num_preemptions == 0
        cluster.wait_free(address)


def test_infermesh_drain_through_the_frontend_moves_every_stream_in_flight(cluster, capsys):
    from infermesh_cli.__main__ import main

    before = _prefilled(cluster)
    threads, results, progress = _start_streams(cluster, 8, DRAINED_TOKENS, first=16)
    _wait_started(progress, range(16, 24))
    after = _prefilled(cluster)
    source, destination = _pinned_replica(before, after)
    code = main(["drain", "--replica", source, "--address", cluster.up.frontend_address])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out + captured.err
    assert "8 of 8 running requests migrated" in out
    _check_streams(cluster, threads, results, range(16, 24), DRAINED_TOKENS)
    assert _prefilled(cluster)[destination] == before[destination]
    assert cluster.frontend_metric("infermesh_frontend_failovers_total") == 0
    for address in cluster.replicas:
        cluster.wait_free(address)


def test_infermesh_migrate_through_the_frontend_moves_one_stream(cluster, capsys):
    from infermesh_cli.__main__ import main

    before = _prefilled(cluster)
    threads, results, progress = _start_streams(cluster, 1, DRAINED_TOKENS, first=16)
    _wait_started(progress, range(16, 17))
    source, destination = _pinned_replica(before, _prefilled(cluster))
    with open_channel(source, cluster.up.role_tls("frontend"), server_role="scheduler") as channel:
        listed = scheduler_pb2_grpc.SchedulerServiceStub(channel).GetLoad(
            scheduler_pb2.GetLoadRequest(include_requests=True), timeout=10
        )
    (request_id,) = [r.request_id for r in listed.requests if r.running]
    argv = ["migrate", "--request-id", request_id, "--replica", source, "--to", destination]
    code = main([*argv, "--address", cluster.up.frontend_address])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert f"migrated to {destination}" in captured.out
    _check_streams(cluster, threads, results, range(16, 17), DRAINED_TOKENS)
    # A replica the frontend does not know is refused before anything is asked of it.
    code = main([*argv[:-1], "127.0.0.1:9", "--address", cluster.up.frontend_address])
    assert code == 1 and "NOT_FOUND" in capsys.readouterr().err
    for address in cluster.replicas:
        cluster.wait_free(address)


def _scheduler_pid(cluster: _Cluster, address: str) -> int:
    """The scheduler process of `address`: up starts replica 0's first, so pids follow replicas."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(cluster.up.process.pid)], capture_output=True, text=True
    )
    pids = []
    for pid in sorted(int(p) for p in out.stdout.split()):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"infermesh_scheduler" in cmdline.read():
                pids.append(pid)
    assert len(pids) == len(cluster.replicas), pids
    return pids[cluster.replicas.index(address)]


def test_sigterm_to_a_scheduler_migrates_its_streams_away_instead_of_recomputing(cluster):
    # Last in the module: it stops replica A's scheduler (up restarts it). The drain test's prompts
    # again: their reference tokens are computed once.
    before = _prefilled(cluster)
    threads, results, progress = _start_streams(cluster, 8, DRAINED_TOKENS, first=16)
    _wait_started(progress, range(16, 24))
    source, destination = _pinned_replica(before, _prefilled(cluster))
    os.kill(_scheduler_pid(cluster, source), signal.SIGTERM)
    _check_streams(cluster, threads, results, range(16, 24), DRAINED_TOKENS)
    assert (
        cluster.frontend_metric("infermesh_rescheduler_migrations_total", policy="drain", outcome="migrated")
        == 8
    )
    assert cluster.frontend_metric("infermesh_frontend_failovers_total") == 0
    # (A's scheduler is gone or restarting: ask B only.)
    assert cluster.load(destination).prefix_cache_queries == before[destination]
    cluster.wait_free(destination)
