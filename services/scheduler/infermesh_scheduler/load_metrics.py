"""The scheduler's load for /metrics, read on the event loop from the metrics server's thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from infermesh_shared.telemetry import SchedulerLoadFigures

from infermesh_scheduler.core.load import LoadSnapshot
from infermesh_scheduler.core.scheduler import Scheduler

# A scrape waits at most this long for the event loop (s); a busy loop costs one stale scrape.
_READ_TIMEOUT_S = 2.0


def figures_from_snapshot(snapshot: LoadSnapshot) -> SchedulerLoadFigures:
    """The metrics' view of a load snapshot."""
    total = snapshot.total_blocks
    held = total - snapshot.free_blocks - snapshot.cached_blocks
    return SchedulerLoadFigures(
        requests_running=snapshot.num_running,
        requests_waiting=snapshot.num_waiting,
        kv_cache_usage_ratio=held / total if total else 0.0,
        prefix_cache_queries=snapshot.prefix_cache_queries,
        prefix_cache_hits=snapshot.prefix_cache_hits,
        preemptions=snapshot.num_preemptions,
        total_blocks=total,
    )


def load_reader(
    loop: asyncio.AbstractEventLoop, current_scheduler: Callable[[], Scheduler | None]
) -> Callable[[], SchedulerLoadFigures | None]:
    """A function for SchedulerMetrics: snapshots the core on `loop`, where it is only ever touched."""

    async def snapshot() -> SchedulerLoadFigures | None:
        scheduler = current_scheduler()
        return None if scheduler is None else figures_from_snapshot(scheduler.load())

    def read() -> SchedulerLoadFigures | None:
        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(_READ_TIMEOUT_S)

    return read
