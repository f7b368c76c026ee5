"""Microbenchmark: scheduler core time per step (schedule() + update()) with N decoding sequences
against a worker that costs nothing. `python -m infermesh_scheduler.core.bench` prints JSON lines."""

from __future__ import annotations

import json
import time

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.request import PriorityClass, RequestSpec, SamplingOptions
from infermesh_scheduler.core.scheduler import Scheduler
from infermesh_scheduler.core.step_plan import SampledToken, StepPlan

BENCH_SIZES = (16, 64, 256, 1024)
_PROMPT_LEN = 32
_BLOCK_SIZE = 16


def _zero_cost_worker(plan: StepPlan) -> list[SampledToken]:
    """One token for every sequence whose scheduled tokens reach its end (every one, here)."""
    out = [SampledToken(s.seq_id, 1 + s.seq_id % 97, 0.0) for s in plan.new_sequences]
    out.extend(SampledToken(s.seq_id, 1 + s.seq_id % 97, 0.0) for s in plan.running_sequences)
    return out


def run_scheduler_bench(num_running: int, steps: int) -> dict:
    """Admit num_running requests, prefill them, then time `steps` decode steps.

    Returns num_running, steps, us_per_step (mean), p50_us, max_us and tokens_per_step.
    """
    warmup = 2
    max_tokens = steps + warmup + 8
    blocks_per_seq = -(-(_PROMPT_LEN + max_tokens) // _BLOCK_SIZE)
    config = SchedulerCoreConfig(
        block_size=_BLOCK_SIZE,
        num_blocks=num_running * blocks_per_seq + 16,
        max_batch_size=num_running,
        max_tokens_per_step=max(num_running * _PROMPT_LEN, 4096),
        max_model_len=_PROMPT_LEN + max_tokens + 1,
        eos_token_ids=(0,),
        chunk_size=num_running * _PROMPT_LEN,
        max_chunk_size=num_running * _PROMPT_LEN,
        max_queue_size=num_running,
    )
    sched = Scheduler(config)
    sampling = SamplingOptions(
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        seed=None,
        max_tokens=max_tokens,
        stop_token_ids=(),
        ignore_eos=True,
    )
    now = time.monotonic()
    for i in range(num_running):
        prompt = [(i * 7919 + j) % 32000 + 1 for j in range(_PROMPT_LEN)]
        sched.add_request(
            RequestSpec(
                request_id=f"bench-{i}",
                prompt_token_ids=prompt,
                sampling=sampling,
                priority=0,
                priority_class=PriorityClass.THROUGHPUT,
                deadline=None,
                client_id="bench",
                arrival_time=now,
            )
        )
    for _ in range(warmup):
        plan = sched.schedule()
        sched.update(plan, _zero_cost_worker(plan))
    timings: list[float] = []
    tokens = 0
    perf = time.perf_counter
    for _ in range(steps):
        t0 = perf()
        plan = sched.schedule()
        t1 = perf()
        sampled = _zero_cost_worker(plan)
        t2 = perf()
        sched.update(plan, sampled)
        t3 = perf()
        # The worker stand-in's own time is not the scheduler's.
        timings.append((t1 - t0) + (t3 - t2))
        tokens += plan.num_scheduled_tokens()
    assert sched.load().num_running == num_running, "bench sequences finished early"
    for i in range(num_running):
        sched.abort_request(f"bench-{i}")
    timings.sort()
    return {
        "num_running": num_running,
        "steps": steps,
        "us_per_step": round(sum(timings) / len(timings) * 1e6, 1),
        "p50_us": round(timings[len(timings) // 2] * 1e6, 1),
        "max_us": round(timings[-1] * 1e6, 1),
        "tokens_per_step": tokens / steps,
    }


def main(steps: int = 200) -> None:
    for size in BENCH_SIZES:
        print(json.dumps(run_scheduler_bench(size, steps)), flush=True)


if __name__ == "__main__":
    main()
