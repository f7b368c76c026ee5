"""What e2e tests share: served test models, a cluster registry, gRPC client calls, leak checks."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from infermesh_cli.local_cluster import ClusterSpec, LocalCluster

from tests.model_factory import build_random_model, write_test_tokenizer

# Byte-level BPE needs 256 byte symbols plus merges and specials.
TEST_VOCAB_SIZE = 512


def build_served_model(arch: str, out_dir: Path, **kwargs) -> Path:
    """A random `arch` checkpoint plus a real tokenizer: everything a frontend and worker need."""
    kwargs.setdefault("vocab_size", TEST_VOCAB_SIZE)
    kwargs.setdefault("max_position_embeddings", 1024)
    build_random_model(arch, out_dir, **kwargs)
    write_test_tokenizer(out_dir, kwargs["vocab_size"])
    return out_dir


def start_cluster(model_dir: Path, log_dir: Path, **spec_fields) -> LocalCluster:
    """Starts scheduler, workers and frontend as processes; the caller must stop() it."""
    worker_args = spec_fields.pop("worker_args", [])
    spec = ClusterSpec(
        model_path=model_dir,
        log_dir=log_dir,
        # Two cores shared by every process: one torch thread per worker keeps them from fighting.
        worker_args=["--num-threads", "1", *worker_args],
        **spec_fields,
    )
    return LocalCluster(spec).start()


def frontend_stub(address: str) -> frontend_pb2_grpc.FrontendServiceStub:
    return frontend_pb2_grpc.FrontendServiceStub(grpc.insecure_channel(address))


def scheduler_stub(address: str) -> scheduler_pb2_grpc.SchedulerServiceStub:
    return scheduler_pb2_grpc.SchedulerServiceStub(grpc.insecure_channel(address))


def generate_request(
    *, text: str | None = None, token_ids: list[int] | None = None, **sampling
) -> frontend_pb2.GenerateInput:
    stop = sampling.pop("stop", [])
    params = frontend_pb2.ClientSamplingParams(stop=stop, **sampling)
    if token_ids is not None:
        return frontend_pb2.GenerateInput(token_ids=frontend_pb2.TokenIds(ids=token_ids), sampling=params)
    return frontend_pb2.GenerateInput(text=text or "", sampling=params)


def wait_all_blocks_free(scheduler_address: str, timeout_s: float = 20.0) -> scheduler_pb2.GetLoadResponse:
    """Waits until no request is live, then returns the load, asserting every KV block is free.

    A block kept by the prefix cache but held by no sequence counts as free: it is evictable.
    """
    stub = scheduler_stub(scheduler_address)
    deadline = time.monotonic() + timeout_s
    while True:
        load = stub.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5)
        idle = load.num_running == 0 and load.num_waiting == 0 and load.num_preempted == 0
        if idle and load.free_blocks + load.cached_blocks == load.total_blocks:
            return load
        if time.monotonic() > deadline:
            raise AssertionError(f"KV blocks not all free {timeout_s}s after the test: {load}")
        time.sleep(0.05)
