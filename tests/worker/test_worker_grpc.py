"""The worker as a separate process, registered with a fake scheduler and driven over gRPC."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc

from tests.free_port import free_port
from tests.model_factory import transformers_greedy
from tests.scheduler_service.service_harness import real_worker_argv
from tests.worker.step_plans import StepPlanner

pytestmark = pytest.mark.e2e


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Implements only RegisterWorker; records who registered."""

    def __init__(self) -> None:
        self.registrations: queue.Queue = queue.Queue()

    def RegisterWorker(self, request, context):
        self.registrations.put(request)
        return scheduler_pb2.RegisterWorkerResponse(worker_id=f"w{self.registrations.qsize()}")


def serve_fake_scheduler(port: int = 0) -> tuple[grpc.Server, FakeScheduler, int]:
    servicer = FakeScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, servicer, port


@pytest.fixture
def fake_scheduler():
    server, servicer, port = serve_fake_scheduler()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=0).wait()


def start_worker(scheduler_address: str, *extra: str) -> tuple[subprocess.Popen, str, list[str]]:
    process = subprocess.Popen(
        real_worker_argv(scheduler_address, "test-worker", "--kv-cache-memory-bytes", str(1 << 22), *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"worker listening on (\S+:\d+)", line)
            if match:
                found.put(match.group(1))

    threading.Thread(target=pump, daemon=True).start()
    try:
        address = found.get(timeout=60)
    except queue.Empty:
        process.kill()
        raise AssertionError("worker did not start:\n" + "".join(lines)) from None
    return process, address, lines


def stop_worker(process: subprocess.Popen) -> int:
    process.terminate()
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def test_worker_registers_and_serves_steps(fake_scheduler, model_dirs):
    scheduler, scheduler_address = fake_scheduler
    metrics_port = free_port()
    process, address, lines = start_worker(scheduler_address, "--metrics-port", str(metrics_port))
    try:
        registration = scheduler.registrations.get(timeout=30)
        assert registration.address == address
        assert registration.device == "cpu"
        assert registration.worker_name == "test-worker"

        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = worker_pb2_grpc.WorkerServiceStub(channel)

        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Execute(worker_pb2.ExecuteRequest(plan=worker_pb2.StepPlan(step_id=1)), timeout=10)
        assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "LoadModel" in excinfo.value.details()

        with pytest.raises(grpc.RpcError) as excinfo:
            stub.LoadModel(worker_pb2.LoadModelRequest(model_path="/nonexistent", dtype="fp32"), timeout=30)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        model_dir = model_dirs["qwen2"]
        loaded = stub.LoadModel(
            worker_pb2.LoadModelRequest(
                model_path=str(model_dir), dtype="fp32", tp_size=1, pp_size=1, block_size=4, max_model_len=256
            ),
            timeout=60,
        )
        assert loaded.block_bytes == 4 * 2 * 2 * 2 * 16 * 4
        assert loaded.max_num_blocks == (1 << 22) // loaded.block_bytes
        stub.InitKVCache(worker_pb2.InitKVCacheRequest(num_blocks=32, num_cpu_blocks=0), timeout=30)

        planner = StepPlanner(4, 32)
        prompts = {1: [3, 1, 4, 1, 5, 9, 2, 6], 2: [2, 7, 1, 8]}
        for seq_id, prompt in prompts.items():
            planner.add(seq_id, prompt)
        schedule = {1: 8, 2: 4}
        for _ in range(5):
            response = stub.Execute(worker_pb2.ExecuteRequest(plan=planner.plan(schedule)), timeout=30)
            assert response.step_id == planner.step_id
            planner.record(response.tokens)
            schedule = planner.decode_all()
        for seq_id, prompt in prompts.items():
            assert planner.sequences[seq_id].outputs == transformers_greedy(model_dir, prompt, 5)

        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
        # Labelled with the service and the model directory's name once LoadModel ran.
        labels = f'{{model_name="{model_dir.name}",service="worker"}}'
        assert f"infermesh_worker_step_tokens_total{labels} 20.0" in metrics.splitlines(), metrics
        assert f"infermesh_worker_step_seconds_count{labels} 5.0" in metrics.splitlines(), metrics

        mismatch = worker_pb2.StepPlan(step_id=99)
        mismatch.running_sequences.add(seq_id=1, num_computed_tokens=2, num_scheduled_tokens=1)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Execute(worker_pb2.ExecuteRequest(plan=mismatch), timeout=10)
        assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        stub.Reset(worker_pb2.ResetRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Execute(worker_pb2.ExecuteRequest(plan=planner.plan(planner.decode_all())), timeout=10)
        assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        channel.close()
    finally:
        code = stop_worker(process)
    assert code == 0, "".join(lines)


def test_worker_exits_when_no_scheduler_answers():
    # Nothing listens on this port: registration must give up and exit non-zero with a clear message.
    probe = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = probe.add_insecure_port("127.0.0.1:0")
    probe.stop(0)
    process, _, lines = start_worker(f"127.0.0.1:{port}", "--register-timeout-ms", "1500")
    try:
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            stop_worker(process)
    time.sleep(0.1)
    assert code != 0
    assert "did not accept the registration" in "".join(lines)


def test_worker_registers_again_with_a_restarted_scheduler():
    server, first, port = serve_fake_scheduler()
    process, address, lines = start_worker(f"127.0.0.1:{port}", "--scheduler-probe-interval-ms", "200")
    replacement = None
    try:
        assert first.registrations.get(timeout=30).address == address
        server.stop(grace=0).wait()
        time.sleep(1.0)  # several probes go unanswered
        replacement, second, _ = serve_fake_scheduler(port)
        again = second.registrations.get(timeout=30)
        assert again.address == address
        assert again.worker_name == "test-worker"
        assert first.registrations.empty()  # the first scheduler saw exactly one registration
    finally:
        code = stop_worker(process)
        if replacement is not None:
            replacement.stop(grace=0).wait()
    assert code == 0, "".join(lines)
