"""Times and profiles one worker step at batch 64 on the ~100M preset, attention kernel vs torch path.

Both paths run in this one process on the same weights, cache contents and plans, so the ratio
holds on a busy machine. Prints one JSON line per (step, path) with ms per step and the top-5
operators by self CPU time (torch.profiler). Example:

    .venv/bin/python scripts/profile_worker_step.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from infermesh_cli.bench_workload import peers_64
from infermesh_cli.demo_model import write_llama_checkpoint
from infermesh_cli.make_model_command import PRESETS
from infermesh_worker.model_runner import LoadSpec, ModelRunner
from infermesh_worker.step_plan import NewSequence, SamplingSpec, StepPlan
from torch.profiler import ProfilerActivity, profile

BLOCK_SIZE = 16


def _plans(num_blocks: int) -> dict[str, StepPlan]:
    """A decode step (64 sequences at their full peers-64 context, 1 token each) and a prefill step
    (64 sequences, first 32 prompt tokens each: a 2,048-token step)."""
    requests = peers_64()
    plans = {}
    for name in ("decode", "prefill"):
        sequences, next_block = [], 0
        for seq_id, request in enumerate(requests, 1):
            tokens = request.prompt + [7] * (request.max_tokens // 2)  # mid-generation context
            if name == "prefill":
                tokens = request.prompt
            blocks = -(-len(tokens) // BLOCK_SIZE)
            table = list(range(next_block, next_block + blocks))
            next_block += blocks
            computed, scheduled = (len(tokens) - 1, 1) if name == "decode" else (0, 32)
            sequences.append(NewSequence(seq_id, tokens, table, computed, scheduled, 0, SamplingSpec()))
        assert next_block <= num_blocks
        plans[name] = StepPlan(step_id=1, new_sequences=sequences)
    return plans


def _top5(prof) -> list[str]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%" for e in events[:5]]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", default="fp32", help="fp32 (issue 17's figures), bf16, auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = write_llama_checkpoint(Path(tempfile.mkdtemp()) / "llama-100m", seed=0, **PRESETS["llama-100m"])
    num_blocks = 2600
    runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=0)
    runner.load_model(LoadSpec(model_path=str(model), block_size=BLOCK_SIZE, dtype=args.dtype))
    runner.init_kv_cache(num_blocks, 0)
    runner.kv_cache.device_cache.normal_()  # stands in for earlier steps' keys and values
    kernel = runner._paged_kernel
    paths = [("torch-gather", None)] + ([("kernel", kernel)] if kernel else [])
    for name, plan in _plans(num_blocks).items():
        samples: dict[str, list[float]] = {path: [] for path, _ in paths}
        cpu: dict[str, list[float]] = {path: [] for path, _ in paths}
        # Paths alternate within each repeat, so a neighbour's load on a shared machine hits both.
        for repeat in range(args.repeats + 1):
            for path, fn in paths:
                runner._paged_kernel = fn
                runner.reset()
                start, cpu_start = time.perf_counter(), time.process_time()
                runner.execute(plan)
                if repeat:  # the first round warms caches and allocators
                    samples[path].append(time.perf_counter() - start)
                    cpu[path].append(time.process_time() - cpu_start)
        times = {path: statistics.median(values) * 1000 for path, values in samples.items()}
        cpu_ms = {path: statistics.median(values) * 1000 for path, values in cpu.items()}
        for path, fn in paths:
            runner._paged_kernel = fn
            runner.reset()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runner.execute(plan)
            line = {"step": name, "dtype": args.dtype, "path": path, "tokens": plan_tokens(plan)}
            line["ms_median"] = round(times[path], 1)
            # CPU time of this process: with --threads 1 it is the step's work, whatever the neighbours do.
            line["cpu_ms_median"] = round(cpu_ms[path], 1)
            print(json.dumps({**line, "top5_self_cpu": _top5(prof)}), flush=True)
        if len(times) == 2:
            ratios = {
                "torch_over_kernel_wall": round(times["torch-gather"] / times["kernel"], 2),
                "torch_over_kernel_cpu": round(cpu_ms["torch-gather"] / cpu_ms["kernel"], 2),
            }
            print(json.dumps({"step": name, **ratios}), flush=True)
    return 0


def plan_tokens(plan: StepPlan) -> int:
    return plan.num_scheduled_tokens()


if __name__ == "__main__":
    sys.exit(main())
