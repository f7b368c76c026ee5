"""Sends a workload at a request rate (Poisson arrivals) under a concurrency cap, with a progress bar."""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time

from infermesh_cli.bench_backends import Backend, RequestResult
from infermesh_cli.bench_workload import BenchRequest


def arrival_gaps(count: int, request_rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: exponential gaps of mean 1/rate (a Poisson process),
    all 0 for an infinite rate (every request at once, the concurrency cap alone paces them)."""
    if math.isinf(request_rate):
        return [0.0] * count
    rng = random.Random(seed)
    return [rng.expovariate(request_rate) for _ in range(count)]


async def run_load(
    backend: Backend,
    workload: list[BenchRequest],
    request_rate: float,
    concurrency: int,
    seed: int,
    progress: bool,
) -> tuple[list[RequestResult], float]:
    """Every request's result in workload order, and the wall time from first send to last answer."""
    gate = asyncio.Semaphore(concurrency)
    bar = _progress_bar(len(workload), progress)

    async def one(request: BenchRequest) -> RequestResult:
        async with gate:
            result = await backend.send(request)
        bar.update(1)
        return result

    started = time.perf_counter()
    tasks = []
    for request, gap in zip(workload, arrival_gaps(len(workload), request_rate, seed), strict=True):
        if gap:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one(request)))
    try:
        results = await asyncio.gather(*tasks)
    finally:
        bar.close()
    return list(results), time.perf_counter() - started


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="requests", unit="req", file=sys.stderr, dynamic_ncols=True)
