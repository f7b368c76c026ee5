"""A WorkerService process for scheduler tests: real gRPC, no model, deterministic tokens.

It keeps per-sequence state from the step plans exactly as a real worker must (new sequences in
full, running ones as deltas) and checks every plan against that state; a plan that does not fit
is answered with INTERNAL and a `plan error:` line on stdout, which the tests look for.
The next token of a sequence is (last token + 1) % vocab_size, with vocab_size read from the
config.json of the model_path given to LoadModel.

Run: python -m tests.scheduler_service.fake_worker --scheduler-address HOST:PORT [--port 0] ...
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc


def next_token(history: list[int], vocab_size: int) -> int:
    """The fake model: every sequence counts up from its last token."""
    return (history[-1] + 1) % vocab_size


class PlanError(Exception):
    """A step plan that contradicts what the worker holds."""


class WorkerFault(Exception):
    """A failure injected by --poison-token (stands for a worker bug triggered by some input)."""


@dataclass(slots=True)
class FakeSequence:
    tokens: list[int]
    blocks: list[int]
    computed: int
    logprobs: bool
    scheduled: int = 0
    history: list[int] = field(default_factory=list)


class FakeWorker(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, max_num_blocks: int, step_delay_s: float, poison_token: int, refuse_load: str) -> None:
        self._max_num_blocks = max_num_blocks
        self._refuse_load = refuse_load
        self._poison_token = poison_token
        self._step_delay_s = step_delay_s
        self._lock = threading.Lock()
        # Pipelined plans are applied in their previous_step_id chain, as a real worker does.
        self._order = threading.Condition(self._lock)
        self._last_step = 0
        self._executing = 0
        self._most_executing = 0
        self._seqs: dict[int, FakeSequence] = {}
        self._vocab_size = 0
        self._block_size = 0
        self._num_blocks = 0
        self._returns_tokens = False

    def LoadModel(self, request, context):
        if self._refuse_load:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._refuse_load)
        config = json.loads((Path(request.model_path) / "config.json").read_text())
        overrides = json.loads(request.config_overrides_json) if request.config_overrides_json else {}
        config.update(overrides)
        if not (request.tp_rank < request.tp_size and request.pp_rank < request.pp_size):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad rank {request.tp_rank}/{request.pp_rank}")
        if request.tp_size * request.pp_size > 1 and not request.dist_init_method.startswith("tcp://"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "a group of several workers needs dist_init_method"
            )
        with self._lock:
            # Like a real worker, only the last pipeline stage's tp_rank 0 answers with tokens.
            self._returns_tokens = request.pp_rank == request.pp_size - 1 and request.tp_rank == 0
            self._vocab_size = config["vocab_size"]
            self._block_size = request.block_size
            self._seqs.clear()
        print(
            f"fake worker loaded: rank tp={request.tp_rank} pp={request.pp_rank} "
            f"init={request.dist_init_method or '-'} backend={request.dist_backend}",
            flush=True,
        )
        return worker_pb2.LoadModelResponse(max_num_blocks=self._max_num_blocks, block_bytes=4096)

    def InitKVCache(self, request, context):
        if request.num_blocks > self._max_num_blocks:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "more blocks than announced")
        with self._lock:
            self._num_blocks = request.num_blocks
            self._last_step = 0
        return worker_pb2.InitKVCacheResponse()

    def Reset(self, request, context):
        with self._lock:
            self._seqs.clear()
            self._last_step = 0
            self._order.notify_all()
        return worker_pb2.ResetResponse()

    def Execute(self, request, context):
        with self._lock:
            self._executing += 1
            if self._executing > self._most_executing:
                self._most_executing = self._executing
                # Tests read this to see that the scheduler keeps several plans in flight.
                print(f"executes in flight: {self._executing}", flush=True)
        try:
            return self._execute(request, context)
        finally:
            with self._lock:
                self._executing -= 1

    def _execute(self, request, context):
        if self._step_delay_s:
            time.sleep(self._step_delay_s)
        with self._lock:
            plan = request.plan
            if plan.previous_step_id:
                waited_until = time.monotonic() + 30.0
                while self._last_step != plan.previous_step_id and time.monotonic() < waited_until:
                    if not context.is_active():
                        context.abort(grpc.StatusCode.CANCELLED, "cancelled")
                    self._order.wait(0.1)
            self._last_step = plan.step_id
            self._order.notify_all()
            try:
                tokens = self._apply(request.plan)
            except PlanError as err:
                print(f"plan error: step {request.plan.step_id}: {err}", flush=True)
                context.abort(grpc.StatusCode.INTERNAL, f"plan error: {err}")
            except WorkerFault as err:
                context.abort(grpc.StatusCode.INTERNAL, f"worker fault: {err}")
        if not self._returns_tokens:
            tokens = []
        return worker_pb2.ExecuteResponse(step_id=request.plan.step_id, tokens=tokens)

    def _check_blocks(self, seq_id: int, seq: FakeSequence) -> None:
        if any(b >= self._num_blocks for b in seq.blocks):
            raise PlanError(f"seq {seq_id}: block id out of range ({seq.blocks}, pool {self._num_blocks})")
        if len(set(seq.blocks)) != len(seq.blocks):
            raise PlanError(f"seq {seq_id}: a block appears twice in its table {seq.blocks}")
        if len(seq.blocks) * self._block_size < seq.computed + seq.scheduled:
            raise PlanError(
                f"seq {seq_id}: {len(seq.blocks)} blocks cannot hold {seq.computed + seq.scheduled} tokens"
            )

    def _apply(self, plan: worker_pb2.StepPlan) -> list[worker_pb2.SampledToken]:
        if self._vocab_size == 0 or self._num_blocks == 0:
            raise PlanError("Execute before LoadModel/InitKVCache")
        for seq_id in plan.finished_seq_ids:
            self._seqs.pop(seq_id, None)
        scheduled: list[int] = []
        for new in plan.new_sequences:
            if new.seq_id in self._seqs:
                raise PlanError(f"seq {new.seq_id} sent as new but is already held")
            self._seqs[new.seq_id] = FakeSequence(
                tokens=list(new.token_ids),
                blocks=list(new.block_ids),
                computed=new.num_computed_tokens,
                logprobs=new.sampling.logprobs > 0,
                scheduled=new.num_scheduled_tokens,
            )
            scheduled.append(new.seq_id)
        for run in plan.running_sequences:
            seq = self._seqs.get(run.seq_id)
            if seq is None:
                raise PlanError(f"seq {run.seq_id} sent as running but never sent as new")
            if seq.computed != run.num_computed_tokens:
                raise PlanError(
                    f"seq {run.seq_id}: scheduler thinks {run.num_computed_tokens} tokens computed, "
                    f"worker has {seq.computed}"
                )
            seq.blocks.extend(run.new_block_ids)
            seq.scheduled = run.num_scheduled_tokens
            scheduled.append(run.seq_id)
        sampled = []
        for seq_id in scheduled:
            seq = self._seqs[seq_id]
            self._check_blocks(seq_id, seq)
            if seq.scheduled <= 0 or seq.computed + seq.scheduled > len(seq.tokens):
                raise PlanError(
                    f"seq {seq_id}: {seq.scheduled} tokens scheduled after {seq.computed} computed, "
                    f"but only {len(seq.tokens)} tokens known"
                )
            if self._poison_token in seq.tokens:
                raise WorkerFault(f"seq {seq_id} holds the poison token {self._poison_token}")
            seq.computed += seq.scheduled
            seq.scheduled = 0
            if seq.computed == len(seq.tokens):
                token = next_token(seq.tokens, self._vocab_size)
                seq.tokens.append(token)
                sampled.append(
                    worker_pb2.SampledToken(
                        seq_id=seq_id, token_id=token, logprob=-0.5 if seq.logprobs else 0.0
                    )
                )
        return sampled


def register(scheduler_address: str, address: str, name: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        while True:
            try:
                reply = stub.RegisterWorker(
                    scheduler_pb2.RegisterWorkerRequest(address=address, device="cpu", worker_name=name),
                    timeout=5,
                )
                print(f"fake worker registered as {reply.worker_id}", flush=True)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scheduler-address", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--worker-name", default="fake-worker")
    parser.add_argument("--max-num-blocks", type=int, default=256)
    parser.add_argument("--step-delay-ms", type=float, default=0.0)
    parser.add_argument("--refuse-load", default="", help="answer LoadModel with INVALID_ARGUMENT and this")
    parser.add_argument("--poison-token", type=int, default=-1, help="fail Execute for sequences holding it")
    args = parser.parse_args(argv)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(
        FakeWorker(args.max_num_blocks, args.step_delay_ms / 1000, args.poison_token, args.refuse_load),
        server,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"worker listening on 127.0.0.1:{port}", flush=True)
    register(args.scheduler_address, f"127.0.0.1:{port}", args.worker_name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
