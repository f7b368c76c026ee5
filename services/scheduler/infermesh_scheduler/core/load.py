"""A snapshot of the scheduler's load (scheduler.proto GetLoadResponse minus `serving`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class RequestLoad:
    """One live request as a migration candidate (scheduler.proto RequestLoad)."""

    request_id: str
    arrival: int
    num_tokens: int
    num_blocks: int
    running: bool


@dataclass(slots=True)
class LoadSnapshot:
    num_waiting: int
    num_running: int
    num_preempted: int
    total_blocks: int
    free_blocks: int
    cached_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_waiting_tokens: int
    num_preemptions: int
    cached_prefix_hashes: list[int] = field(default_factory=list)
    # Held blocks plus those the queue will need soon, over the pool (scheduler.proto names what).
    kv_cache_usage_ratio_projected: float = 0.0
