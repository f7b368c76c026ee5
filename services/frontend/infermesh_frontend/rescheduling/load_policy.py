"""Which replicas give requests and which take them: seed 001's `decode_load` policy filters.

Every interval the rescheduler reads one load number per replica (the metric named by
`rescheduling_decode_load_metric`). A replica at or above `rescheduling_decode_load_threshold` is
a migration source; one below it a destination. Sources are paired from the most loaded down with
destinations from the least loaded up, each replica at most once per round, and a pair only
forms when the source's load exceeds the destination's by more than
`rescheduling_load_balance_threshold`: a gap that small is not worth a migration.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from infermesh.v1 import scheduler_pb2


class LoadMetric(enum.StrEnum):
    """Load numbers a replica's GetLoad yields (higher = busier)."""

    KV_CACHE_USAGE_RATIO_PROJECTED = "kv_cache_usage_ratio_projected"
    KV_CACHE_USAGE_RATIO = "kv_cache_usage_ratio"
    NUM_REQUESTS = "num_requests"
    NUM_WAITING_REQUESTS = "num_waiting_requests"


def load_value(metric: LoadMetric, report: scheduler_pb2.GetLoadResponse) -> float:
    """The number `metric` names, read from one replica's GetLoad answer."""
    match metric:
        case LoadMetric.KV_CACHE_USAGE_RATIO_PROJECTED:
            return report.kv_cache_usage_ratio_projected
        case LoadMetric.KV_CACHE_USAGE_RATIO:
            held = report.total_blocks - report.free_blocks - report.cached_blocks
            return held / report.total_blocks if report.total_blocks else 0.0
        case LoadMetric.NUM_REQUESTS:
            return float(report.num_waiting + report.num_running + report.num_preempted)
        case LoadMetric.NUM_WAITING_REQUESTS:
            return float(report.num_waiting)
    raise ValueError(f"unknown load metric {metric!r}")


@dataclass(frozen=True, slots=True)
class LoadedReplica:
    address: str
    load: float
    # A replica that is not serving (group broken, draining) neither gives nor takes.
    serving: bool = True


@dataclass(frozen=True, slots=True)
class MigrationPair:
    source: LoadedReplica
    destination: LoadedReplica


def split_sources_destinations(
    loads: Sequence[LoadedReplica], threshold: float
) -> tuple[list[LoadedReplica], list[LoadedReplica]]:
    """(sources most loaded first, destinations least loaded first); ties by address."""
    live = [r for r in loads if r.serving]
    sources = sorted((r for r in live if r.load >= threshold), key=lambda r: (-r.load, r.address))
    destinations = sorted((r for r in live if r.load < threshold), key=lambda r: (r.load, r.address))
    return sources, destinations


def pair_replicas(
    loads: Sequence[LoadedReplica], threshold: float, balance_threshold: float
) -> list[MigrationPair]:
    """The (source, destination) pairs of one rescheduling round of the decode_load policy."""
    sources, destinations = split_sources_destinations(loads, threshold)
    pairs = []
    for source, destination in zip(sources, destinations, strict=False):
        if source.load - destination.load <= balance_threshold:
            break  # later pairs are closer still
        pairs.append(MigrationPair(source, destination))
    return pairs
