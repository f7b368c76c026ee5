"""Starts a real scheduler process and fake worker processes, and talks to them over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from infermesh.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from infermesh_cli.local_cluster import ServiceProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB_SIZE = 128
MAX_POSITIONS = 256
EOS_ID = 2


def write_tiny_llama(model_dir: Path) -> Path:
    """A model directory holding only the config.json the scheduler reads (no weights needed)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "bos_token_id": 1,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_scheduler(model_dir: Path, *args: str) -> ServiceProcess:
    """A scheduler process on a free port; returns once it printed its address."""
    process = ServiceProcess(
        name="scheduler",
        args=[
            sys.executable,
            "-m",
            "infermesh_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model-path",
            str(model_dir),
            "--dtype",
            "fp32",
            *args,
        ],
        env=_env(),
    )
    process.start()
    try:
        process.wait_listening(30)
    except BaseException:
        process.kill()
        raise
    return process


def run_scheduler_to_exit(model_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """A scheduler process on `model_dir` run until it exits by itself (a refused startup)."""
    return subprocess.run(
        [sys.executable, "-m", "infermesh_scheduler", "--model-path", str(model_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


def real_worker_argv(scheduler_address: str, name: str, *args: str, port: int = 0) -> list[str]:
    """The command line of a real infermesh_worker (CPU, one thread) on 127.0.0.1:`port`."""
    return [
        sys.executable,
        "-m",
        "infermesh_worker",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--scheduler-address",
        scheduler_address,
        "--worker-name",
        name,
        "--device",
        "cpu",
        "--num-threads",
        "1",
        *args,
    ]


def start_real_worker(
    scheduler_address: str, name: str, *args: str, port: int = 0, wait: bool = True
) -> ServiceProcess:
    """A real infermesh_worker process on `port` (0: a free one), registering at
    `scheduler_address`; with `wait`, returns once it printed its address (else at once, so
    several start side by side)."""
    process = ServiceProcess(
        name="worker", args=real_worker_argv(scheduler_address, name, *args, port=port), env=_env()
    )
    process.start()
    try:
        if wait:
            process.wait_listening(60)
    except BaseException:
        process.kill()
        raise
    return process


def start_fake_worker(scheduler_address: str, name: str, *args: str) -> ServiceProcess:
    """A fake worker process registered at `scheduler_address`."""
    process = ServiceProcess(
        name="worker",
        args=[
            sys.executable,
            "-m",
            "tests.scheduler_service.fake_worker",
            "--scheduler-address",
            scheduler_address,
            "--worker-name",
            name,
            *args,
        ],
        env=_env(),
    )
    process.start()
    try:
        process.wait_listening(30)
        deadline = time.monotonic() + 30
        while "fake worker registered" not in process.output_tail():
            assert process.alive() and time.monotonic() < deadline, process.output_tail()
            time.sleep(0.02)
    except BaseException:
        process.kill()
        raise
    return process


def assert_no_plan_errors(worker: ServiceProcess) -> None:
    """The fake worker found every plan consistent with the sequences it holds."""
    tail = worker.output_tail(200)
    assert "plan error" not in tail, tail


@contextmanager
def scheduler_with_fake_worker(
    model_dir: Path, *scheduler_args: str, worker_args: tuple[str, ...] = ()
) -> Iterator[tuple[ServiceProcess, scheduler_pb2_grpc.SchedulerServiceStub]]:
    """A scheduler process served by one fake worker, and a stub to it; both stopped after."""
    scheduler = start_scheduler(model_dir, *scheduler_args)
    worker = None
    try:
        worker = start_fake_worker(scheduler.address, "t0", *worker_args)
        with grpc.insecure_channel(scheduler.address) as channel:
            yield scheduler, scheduler_pb2_grpc.SchedulerServiceStub(channel)
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


class StreamThread:
    """One Submit streamed to its end on a thread: its responses, or the error it ended with."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerServiceStub, request, timeout_s: float) -> None:
        self.responses: list[scheduler_pb2.SubmitResponse] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, args=(stub, request, timeout_s), daemon=True)
        self._thread.start()

    def _run(self, stub, request, timeout_s: float) -> None:
        try:
            self.responses = list(stub.Submit(request, timeout=timeout_s))
        except grpc.RpcError as err:
            self.error = err

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def wait_running(
    stub: scheduler_pb2_grpc.SchedulerServiceStub, count: int = 1, timeout_s: float = 10.0
) -> None:
    """Returns once `count` requests run on the scheduler."""
    deadline = time.monotonic() + timeout_s
    while load(stub).num_running < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests running after {timeout_s} s"
        time.sleep(0.01)


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


def wait_health(address: str, status: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health_status(address) != status:
        assert time.monotonic() < deadline, f"health of {address} never became {status}"
        time.sleep(0.05)


def sampling(max_tokens: int, **fields) -> common_pb2.SamplingParams:
    fields.setdefault("top_p", 1.0)
    fields.setdefault("n", 1)
    return common_pb2.SamplingParams(max_tokens=max_tokens, **fields)


def submit_request(
    request_id: str, prompt: list[int], max_tokens: int, **kwargs
) -> scheduler_pb2.SubmitRequest:
    sampling_fields = {
        k: kwargs.pop(k) for k in list(kwargs) if k in common_pb2.SamplingParams.DESCRIPTOR.fields_by_name
    }
    return scheduler_pb2.SubmitRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling=sampling(max_tokens, **sampling_fields),
        **kwargs,
    )


def expected_tokens(prompt: list[int], count: int) -> list[int]:
    """What the fake worker generates: counting up from the last prompt token."""
    return [(prompt[-1] + i) % VOCAB_SIZE for i in range(1, count + 1)]


def load(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> scheduler_pb2.GetLoadResponse:
    return stub.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5)


def wait_all_blocks_free(stub: scheduler_pb2_grpc.SchedulerServiceStub, timeout_s: float = 10.0) -> None:
    """Every KV block is free or merely cached (evictable), and nothing runs or waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = load(stub)
        if (
            snapshot.total_blocks > 0
            and snapshot.free_blocks + snapshot.cached_blocks == snapshot.total_blocks
            and snapshot.num_running == 0
            and snapshot.num_waiting == 0
        ):
            return
        assert time.monotonic() < deadline, f"blocks still held: {snapshot}"
        time.sleep(0.05)
