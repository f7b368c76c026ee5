"""Migration downtime against failover-by-recompute, at the worker level, on two real worker processes.

For each context length the source worker prefills the prompt and decodes a few tokens; the
complete blocks are pre-copied to the destination while (in a live migration) the source goes
on decoding. Then, per repeat and in alternation within the same run:

  downtime   stop-and-copy of the last, partial block (SendKVBlocks) + the destination's first
             decode step from the copied KV (NewSequence with num_computed_tokens set): the pause
             a client sees between two tokens
  recompute  what failover does instead: the destination prefills prompt + generated tokens
             (NewSequence from 0) to produce the same next token

Both produce the same token (checked). The scheduler RPCs of the protocol (reserve, adopt: two
small unary calls) are not in these numbers. Example:

    .venv/bin/python scripts/bench_migration.py --model-preset demo llama-100m --repeats 3
"""

from __future__ import annotations

import argparse
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from infermesh_cli.demo_model import ensure_demo_model, write_llama_checkpoint
from infermesh_cli.make_model_command import PRESETS

BLOCK_SIZE = 16
DECODED_BEFORE_MOVE = 5  # tokens the source generated before the final stop-and-copy


class _Registrar(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Accepts the workers' registration; this script drives them directly."""

    def RegisterWorker(self, request, context):
        return scheduler_pb2.RegisterWorkerResponse(worker_id=request.address)


def _start_worker(scheduler_address: str, kv_bytes: int, threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "infermesh_worker", "--host", "127.0.0.1", "--port", "0",
         "--scheduler-address", scheduler_address, "--num-threads", str(threads),
         "--kv-cache-memory-bytes", str(kv_bytes)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    found: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            if match := re.search(r"worker listening on (\S+:\d+)", line):
                found.put(match.group(1))

    threading.Thread(target=pump, daemon=True).start()
    return process, found.get(timeout=120)


class _Driver:
    """One worker, driven plan by plan."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(address))
        self.step_id = 0

    def execute(self, new=(), running=(), finished=()) -> list[int]:
        self.step_id += 1
        plan = worker_pb2.StepPlan(step_id=self.step_id, finished_seq_ids=list(finished))
        for item in new:
            plan.new_sequences.add(**item)
        for item in running:
            plan.running_sequences.add(**item)
        response = self.stub.Execute(worker_pb2.ExecuteRequest(plan=plan), timeout=600)
        return [t.token_id for t in response.tokens]


def _greedy() -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=0.0, top_p=1.0, max_tokens=4096)


def _new(
    seq_id: int, tokens: list[int], blocks: list[int], computed: int, scheduled: int, outputs: int
) -> dict:
    return dict(
        seq_id=seq_id,
        token_ids=tokens,
        block_ids=blocks,
        num_computed_tokens=computed,
        num_scheduled_tokens=scheduled,
        num_output_tokens=outputs,
        sampling=_greedy(),
    )


def _send(source: _Driver, dest: _Driver, src: list[int], dst: list[int], name: str) -> None:
    request = worker_pb2.SendKVBlocksRequest(
        destination_address=dest.address, src_block_ids=src, dst_block_ids=dst, transfer_id=name
    )
    source.stub.SendKVBlocks(request, timeout=600)


def _one_length(source: _Driver, dest: _Driver, ctx: int, repeats: int, vocab: int) -> dict[str, float]:
    prompt = [(7 * i + 3) % (vocab - 1) + 1 for i in range(ctx)]
    total = ctx + DECODED_BEFORE_MOVE
    nblocks = -(-(total + 1) // BLOCK_SIZE)
    src_blocks = list(range(nblocks))
    tokens = list(prompt)
    tokens += source.execute(new=[_new(1, prompt, src_blocks, 0, ctx, 0)])
    for _ in range(DECODED_BEFORE_MOVE - 1):
        tokens += source.execute(
            running=[dict(seq_id=1, num_computed_tokens=len(tokens) - 1, num_scheduled_tokens=1)]
        )
    computed = len(tokens) - 1  # the last sampled token has no KV yet
    full = computed // BLOCK_SIZE
    expected = source.execute(running=[dict(seq_id=1, num_computed_tokens=computed, num_scheduled_tokens=1)])
    source_blocks_now = src_blocks[: -(-computed // BLOCK_SIZE)]
    results: dict[str, list[float]] = {"precopy": [], "downtime": [], "recompute": []}
    dst_base = nblocks  # destination block ids: the migrated copy; recompute uses 0..nblocks-1
    for _ in range(repeats):
        dst_blocks = list(range(dst_base, dst_base + nblocks))
        started = time.perf_counter()
        _send(source, dest, source_blocks_now[:full], dst_blocks[:full], "precopy")
        results["precopy"].append(time.perf_counter() - started)
        started = time.perf_counter()
        if len(source_blocks_now) > full:
            _send(source, dest, source_blocks_now[full:], dst_blocks[full : len(source_blocks_now)], "final")
        moved = dest.execute(new=[_new(2, tokens, dst_blocks, computed, 1, DECODED_BEFORE_MOVE)])
        results["downtime"].append(time.perf_counter() - started)
        started = time.perf_counter()
        again = dest.execute(
            new=[_new(3, tokens, src_blocks, 0, len(tokens), DECODED_BEFORE_MOVE)], finished=[2]
        )
        results["recompute"].append(time.perf_counter() - started)
        dest.execute(finished=[3])
        if not (moved == again == expected):
            raise AssertionError(f"ctx {ctx}: migrated {moved}, recomputed {again}, source {expected}")
    source.execute(finished=[1])
    return {name: statistics.median(values) for name, values in results.items()}


def _model(preset: str, work: Path) -> Path:
    if preset == "demo":
        return ensure_demo_model()
    return write_llama_checkpoint(work / preset, seed=0, **PRESETS[preset])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-preset", nargs="+", choices=sorted(PRESETS), default=["demo"])
    parser.add_argument("--context-lengths", nargs="+", type=int, default=list(range(256, 1793, 256)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="infermesh-bench-migration-"))
    registrar = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(_Registrar(), registrar)
    port = registrar.add_insecure_port("127.0.0.1:0")
    registrar.start()
    processes = []
    try:
        for preset in args.model_preset:
            model = _model(preset, work)
            max_len = max(args.context_lengths) + DECODED_BEFORE_MOVE + BLOCK_SIZE
            num_blocks = 2 * (-(-max_len // BLOCK_SIZE)) + 2
            drivers = []
            for _ in range(2):
                process, address = _start_worker(f"127.0.0.1:{port}", 1 << 30, args.num_threads)
                processes.append(process)
                driver = _Driver(address)
                driver.stub.LoadModel(worker_pb2.LoadModelRequest(
                    model_path=str(model), dtype=args.dtype, block_size=BLOCK_SIZE, max_model_len=max_len),
                    timeout=600)  # fmt: skip
                driver.stub.InitKVCache(worker_pb2.InitKVCacheRequest(num_blocks=num_blocks), timeout=600)
                drivers.append(driver)
            vocab = PRESETS[preset]["vocab_size"]
            print(f"\n{preset} ({args.dtype}, block {BLOCK_SIZE}, {args.num_threads} thread(s) per worker, "
                  f"median of {args.repeats})")  # fmt: skip
            header = ("context", "pre-copy ms", "downtime ms", "recompute ms", "recompute/downtime")
            print("{:>8} {:>12} {:>12} {:>13} {:>19}".format(*header))
            for ctx in args.context_lengths:
                r = _one_length(drivers[0], drivers[1], ctx, args.repeats, vocab)
                ms = {name: value * 1e3 for name, value in r.items()}
                ratio = r["recompute"] / r["downtime"]
                row = (ctx, ms["precopy"], ms["downtime"], ms["recompute"], ratio)
                print("{:>8} {:>12.1f} {:>12.1f} {:>13.1f} {:>19.1f}".format(*row), flush=True)
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
            processes.clear()
    finally:
        for process in processes:
            process.kill()
        registrar.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
