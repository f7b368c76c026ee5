"""`infermesh up --replicas 2`: two scheduler replicas with their own workers behind one frontend;
requests land on both, and a replica's scheduler killed with SIGKILL is restarted by `up` while the
frontend's failover finishes the streams it was running."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import grpc
import pytest
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from infermesh_shared.grpc_transport import open_channel

from tests.e2e.up_cluster import UpCluster, up_cluster

pytestmark = pytest.mark.e2e

_STREAMS = 8
_MAX_TOKENS = 48


def _load(cluster: UpCluster, address: str) -> scheduler_pb2.GetLoadResponse:
    with open_channel(address, cluster.role_tls("frontend"), server_role="scheduler") as channel:
        return scheduler_pb2_grpc.SchedulerServiceStub(channel).GetLoad(
            scheduler_pb2.GetLoadRequest(), timeout=10
        )


def _running(cluster: UpCluster, address: str) -> int:
    return _load(cluster, address).num_running


def _serving(cluster: UpCluster, address: str) -> bool:
    try:
        return _load(cluster, address).serving
    except grpc.RpcError:
        return False  # still restarting


def _scheduler_pids(up: subprocess.Popen) -> list[int]:
    """The scheduler processes under `up`, oldest first (replica 0 was started first)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(up.pid)], capture_output=True, text=True)
    pids = []
    for pid in sorted(int(p) for p in out.stdout.split()):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"infermesh_scheduler" in cmdline.read():
                pids.append(pid)
    return pids


def _stream(cluster: UpCluster, index: int, results: dict, started: threading.Event) -> None:
    prompt = f"Replica stream {index}: once upon a time"
    sampling = frontend_pb2.ClientSamplingParams(max_tokens=_MAX_TOKENS, temperature=0, ignore_eos=True)
    request = frontend_pb2.GenerateStreamRequest(
        input=frontend_pb2.GenerateInput(text=prompt, sampling=sampling)
    )
    tokens: list[int] = []
    try:
        with open_channel(cluster.frontend_address) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            for chunk in stub.GenerateStream(request, timeout=180):
                tokens.extend(chunk.token_ids)
                if tokens:
                    started.set()
        results[index] = ("OK", tokens)
    except grpc.RpcError as err:
        results[index] = (err.code().name, tokens)


def test_up_replicas_share_load_and_survive_a_killed_scheduler(tmp_path):
    with up_cluster(tmp_path, "--replicas", "2", "--http-port", "0") as cluster:
        output: list[str] = []
        threading.Thread(target=lambda: output.extend(cluster.process.stdout), daemon=True).start()
        addresses = [
            cluster.announced("scheduler", "scheduler"),
            cluster.announced("scheduler-1", "scheduler"),
        ]
        assert addresses[0] != addresses[1]
        schedulers = _scheduler_pids(cluster.process)
        assert len(schedulers) == 2, schedulers
        # Each replica runs its own worker group: two workers, one per replica.
        for log_name in ("worker-0", "worker-1"):
            assert cluster.announced(log_name, "worker")

        reference = {
            i: cluster.greedy(f"Replica stream {i}: once upon a time", _MAX_TOKENS) for i in range(_STREAMS)
        }
        results: dict[int, tuple[str, list[int]]] = {}
        started = [threading.Event() for _ in range(_STREAMS)]
        threads = [
            threading.Thread(target=_stream, args=(cluster, i, results, started[i]), daemon=True)
            for i in range(_STREAMS)
        ]
        for thread in threads:
            thread.start()
        # The streams land on both replicas; kill replica 1's scheduler while it runs some of them.
        deadline = time.monotonic() + 120
        while not all(_running(cluster, a) for a in addresses) or not any(e.is_set() for e in started):
            assert time.monotonic() < deadline, "the streams never ran on both replicas at once"
            assert len(results) < _STREAMS, "streams finished before replica 1 ran one"
            time.sleep(0.02)
        os.kill(schedulers[1], signal.SIGKILL)
        for thread in threads:
            thread.join(240)
        # Failover continued every stream on the surviving replica: all end OK with the full count,
        # the same greedy tokens as undisturbed requests.
        assert {i: r[0] for i, r in results.items()} == dict.fromkeys(range(_STREAMS), "OK"), results
        for i in range(_STREAMS):
            assert results[i][1] == reference[i], f"stream {i} differs after failover"

        # `up` restarts the scheduler on the same address; its workers re-register; it serves again.
        deadline = time.monotonic() + 120
        while not any("scheduler-1 exited (status -9); restarting" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.1)
        while not _serving(cluster, addresses[1]):
            assert time.monotonic() < deadline, "restarted replica 1 never served again"
            time.sleep(0.2)
        assert cluster.process.poll() is None, "".join(output)
        cluster.process.send_signal(signal.SIGTERM)
        assert cluster.process.wait(60) == 0
