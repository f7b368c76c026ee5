"""One rescheduling round's decisions: which requests move where, from the replicas' load reports.

Pure: the loop (rescheduler.py) reads the reports, asks `plan_round`, then starts the moves its
bounds allow. Moves come in priority order:
  drain             every running request of a replica that is shutting down (GetLoad.draining);
                    always on while a rescheduler runs: draining is the operator's intent
  neutral_failover  every running request of a replica that answers but is not serving
  decode_load       seed 001's load balance: pairs from load_policy, requests by the select
                    rule/order/value
Drain and failover send requests to the serving replicas whose neutral load is below
rescheduling_neutral_load_threshold, least loaded first, round robin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infermesh.v1 import scheduler_pb2

from infermesh_frontend.rescheduling.load_policy import LoadedReplica, LoadMetric, load_value, pair_replicas
from infermesh_frontend.rescheduling.request_selection import (
    Candidate,
    SelectOrder,
    SelectRule,
    select_requests,
)

DRAIN = "drain"
NEUTRAL_FAILOVER = "neutral_failover"
DECODE_LOAD = "decode_load"
# The policies this rescheduler runs; the config refuses the others (they need PD roles).
RUNNABLE_POLICIES = (DECODE_LOAD, NEUTRAL_FAILOVER)


@dataclass(frozen=True, slots=True)
class Move:
    request_id: str
    source: str
    destination: str
    policy: str


def candidates_of(report: scheduler_pb2.GetLoadResponse) -> list[Candidate]:
    return [
        Candidate(r.request_id, float(r.arrival), r.num_tokens, r.num_blocks, r.running)
        for r in report.requests
    ]


def takers(
    reports: Mapping[str, scheduler_pb2.GetLoadResponse], metric: LoadMetric, threshold: float
) -> list[str]:
    """Replicas that may receive requests from a drain or failover, least loaded first."""
    loaded = [
        (load_value(metric, r), address)
        for address, r in reports.items()
        if r.serving and not r.draining and load_value(metric, r) < threshold
    ]
    return [address for _, address in sorted(loaded)]


def _evacuate(
    sources: list[str],
    reports: Mapping[str, scheduler_pb2.GetLoadResponse],
    destinations: list[str],
    policy: str,
    eligible: Callable[[str, str], bool],
) -> list[Move]:
    if not destinations:
        return []
    cycle = itertools.cycle(destinations)
    moves = []
    for source in sources:
        for candidate in sorted(candidates_of(reports[source]), key=lambda c: (c.arrival, c.request_id)):
            if candidate.running and eligible(candidate.request_id, policy):
                moves.append(Move(candidate.request_id, source, next(cycle), policy))
    return moves


def plan_round(
    reports: Mapping[str, scheduler_pb2.GetLoadResponse], options: Any, eligible: Callable[[str, str], bool]
) -> list[Move]:
    """The moves of one round, most urgent first; `options` is a rescheduling_config section and
    `eligible(request_id, policy)` says whether a request may move now by that policy."""
    policies = set(options.rescheduling_policies)
    neutral = LoadMetric(options.rescheduling_neutral_load_metric)
    destinations = takers(reports, neutral, options.rescheduling_neutral_load_threshold)
    draining = sorted(address for address, r in reports.items() if r.draining)
    moves = _evacuate(draining, reports, destinations, DRAIN, eligible)
    if NEUTRAL_FAILOVER in policies:
        failing = sorted(address for address, r in reports.items() if not r.serving and not r.draining)
        moves += _evacuate(failing, reports, destinations, NEUTRAL_FAILOVER, eligible)
    if DECODE_LOAD in policies:
        moves += _balance(reports, options, eligible)
    return moves


def _balance(
    reports: Mapping[str, scheduler_pb2.GetLoadResponse], options: Any, eligible: Callable[[str, str], bool]
) -> list[Move]:
    metric = LoadMetric(options.rescheduling_decode_load_metric)
    loads = [
        LoadedReplica(address, load_value(metric, r), serving=r.serving and not r.draining)
        for address, r in reports.items()
    ]
    pairs = pair_replicas(
        loads, options.rescheduling_decode_load_threshold, options.rescheduling_load_balance_threshold
    )
    moves = []
    for pair in pairs:
        report = reports[pair.source.address]
        # Only running requests carry KV to migrate; a waiting one is not a migration.
        candidates = [c for c in candidates_of(report) if c.running and eligible(c.request_id, DECODE_LOAD)]
        chosen = select_requests(
            candidates,
            SelectOrder(options.rescheduling_req_select_order),
            SelectRule(options.rescheduling_req_select_rule),
            options.rescheduling_req_select_value,
            report.total_blocks,
        )
        moves += [
            Move(c.request_id, pair.source.address, pair.destination.address, DECODE_LOAD) for c in chosen
        ]
    return moves
