"""Small constructors for scheduler-core tests."""

from __future__ import annotations

import time

from infermesh_scheduler.core import (
    PriorityClass,
    RequestOutput,
    RequestSpec,
    SamplingOptions,
    Scheduler,
    SchedulerCoreConfig,
)

from tests.scheduler_core.simulated_worker import EOS, SimulatedWorker


def make_config(**overrides) -> SchedulerCoreConfig:
    values = dict(
        block_size=4,
        num_blocks=64,
        num_cpu_blocks=0,
        max_batch_size=16,
        max_tokens_per_step=256,
        max_model_len=512,
        eos_token_ids=(EOS,),
        enable_prefix_cache=True,
        prefix_cache_capacity=1024,
        chunk_size=64,
        min_chunk_size=4,
        max_chunk_size=128,
    )
    values.update(overrides)
    return SchedulerCoreConfig(**values)


def make_spec(
    request_id: str,
    prompt: list[int],
    max_tokens: int = 8,
    *,
    priority: int | None = 0,
    priority_class: PriorityClass = PriorityClass.THROUGHPUT,
    timeout_s: float | None = None,
    client_id: str = "c",
    n: int = 1,
    ignore_eos: bool = True,
    arrival_time: float | None = None,
    resumed: list[int] | None = None,
) -> RequestSpec:
    sampling = SamplingOptions.greedy(max_tokens, ignore_eos=ignore_eos, n=n)
    return RequestSpec(
        request_id=request_id,
        prompt_token_ids=list(prompt),
        sampling=sampling,
        priority=priority,
        priority_class=priority_class,
        timeout_s=timeout_s,
        client_id=client_id,
        arrival_time=time.monotonic() if arrival_time is None else arrival_time,
        resumed_output_token_ids=list(resumed or []),
    )


def make_pair(**overrides) -> tuple[Scheduler, SimulatedWorker]:
    config = make_config(**overrides)
    sched = Scheduler(config)
    worker = SimulatedWorker(config.block_size, config.num_blocks, config.num_cpu_blocks)
    return sched, worker


def step(sched: Scheduler, worker: SimulatedWorker) -> list[RequestOutput]:
    plan = sched.schedule()
    sampled = worker.execute(plan)
    outs = sched.update(plan, sampled)
    sched.check_invariants()
    return outs


def run_to_completion(
    sched: Scheduler, worker: SimulatedWorker, max_steps: int = 5000
) -> dict[tuple[str, int], list[int]]:
    """Step until idle; returns generated tokens per (request_id, index)."""
    tokens: dict[tuple[str, int], list[int]] = {}
    for _ in range(max_steps):
        if not sched.has_work():
            return tokens
        for out in step(sched, worker):
            tokens.setdefault((out.request_id, out.index), []).extend(out.new_token_ids)
    raise AssertionError(f"scheduler still busy after {max_steps} steps")


def collect(outputs: list[RequestOutput], into: dict[tuple[str, int], list[int]]) -> None:
    for out in outputs:
        into.setdefault((out.request_id, out.index), []).extend(out.new_token_ids)


def assert_all_blocks_free(sched: Scheduler) -> None:
    load = sched.load()
    assert load.free_blocks + load.cached_blocks == load.total_blocks, load
    assert load.num_running == 0 and load.num_waiting == 0 and load.num_preempted == 0, load
