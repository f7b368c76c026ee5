"""`infermesh bench scheduler`: the scheduler core's time per step (schedule() + update()) with N
decoding sequences (and optionally W more waiting) against a worker that costs nothing.

Reports wall-clock time (what a step takes on this machine now, other processes included) and
the thread's CPU time (what the step itself costs; steadier on a shared machine).
"""

from __future__ import annotations

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


def _stats(prefix: str, samples: list[float]) -> dict:
    samples = sorted(samples)
    return {
        f"{prefix}us_per_step": round(sum(samples) / len(samples) * 1e6, 1),
        f"{prefix}p50_us": round(samples[len(samples) // 2] * 1e6, 1),
        f"{prefix}max_us": round(samples[-1] * 1e6, 1),
    }


def run_scheduler_bench(num_running: int, steps: int, num_waiting: int = 0) -> dict:
    """Admit num_running requests, prefill them, then time `steps` decode steps while num_waiting
    more requests wait (the batch is full, so they stay queued and are looked at every step).

    Returns num_running, num_waiting, steps, tokens_per_step and the wall-clock (us_per_step mean,
    p50_us, max_us) and thread CPU time (cpu_us_per_step, cpu_p50_us, cpu_max_us) of a step.
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
        max_queue_size=num_running + num_waiting,
    )
    sched = Scheduler(config)
    sampling = SamplingOptions.greedy(max_tokens, ignore_eos=True)
    now = time.monotonic()
    for i in range(num_running + num_waiting):
        prompt = [(i * 7919 + j) % 32000 + 1 for j in range(_PROMPT_LEN)]
        sched.add_request(
            RequestSpec(
                request_id=f"bench-{i}",
                prompt_token_ids=prompt,
                sampling=sampling,
                priority=0,
                priority_class=PriorityClass.THROUGHPUT,
                timeout_s=None,
                client_id="bench",
                arrival_time=now,
            )
        )
    for _ in range(warmup):
        plan = sched.schedule()
        sched.update(plan, _zero_cost_worker(plan))
    wall: list[float] = []
    cpu: list[float] = []
    tokens = 0
    perf = time.perf_counter
    thread = time.thread_time
    for _ in range(steps):
        c0, t0 = thread(), perf()
        plan = sched.schedule()
        t1, c1 = perf(), thread()
        sampled = _zero_cost_worker(plan)
        c2, t2 = thread(), perf()
        sched.update(plan, sampled)
        t3, c3 = perf(), thread()
        # The worker stand-in's own time is not the scheduler's.
        wall.append((t1 - t0) + (t3 - t2))
        cpu.append((c1 - c0) + (c3 - c2))
        tokens += plan.num_scheduled_tokens()
    load = sched.load()
    assert load.num_running == num_running, "bench sequences finished early"
    assert load.num_waiting == num_waiting, "bench waiting requests were admitted"
    for i in range(num_running + num_waiting):
        sched.abort_request(f"bench-{i}")
    return {
        "num_running": num_running,
        "num_waiting": num_waiting,
        "steps": steps,
        **_stats("", wall),
        **_stats("cpu_", cpu),
        "tokens_per_step": tokens / steps,
    }
