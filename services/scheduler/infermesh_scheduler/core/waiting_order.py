"""The order in which waiting sequences are considered, one function per policy.

Every order starts with the priority class (LATENCY_CRITICAL first) and ends with the arrival
number, so equal requests are served first come, first served.
"""

from __future__ import annotations

from collections.abc import Callable

from infermesh_scheduler.core.cost_model import StepCostModel
from infermesh_scheduler.core.sequence import Sequence


def fcfs(waiting: list[Sequence], now: float, cost: StepCostModel, served: dict[str, int]) -> list[Sequence]:
    return sorted(waiting, key=lambda s: (s.rank[0], s.rank[2]))


def by_priority(
    waiting: list[Sequence], now: float, cost: StepCostModel, served: dict[str, int]
) -> list[Sequence]:
    return sorted(waiting, key=lambda s: s.rank)


def earliest_deadline(
    waiting: list[Sequence], now: float, cost: StepCostModel, served: dict[str, int]
) -> list[Sequence]:
    return sorted(waiting, key=lambda s: (s.rank[0], s.request.deadline_mono, s.rank[2]))


def least_remaining_slack(
    waiting: list[Sequence], now: float, cost: StepCostModel, served: dict[str, int]
) -> list[Sequence]:
    def slack(s: Sequence) -> float:
        sampling = s.request.spec.sampling
        decode_left = max(0, sampling.max_tokens - s.num_output_tokens)
        remaining = cost.service_time(s.num_tokens - s.num_computed_tokens, decode_left)
        return s.request.deadline_mono - now - remaining

    return sorted(waiting, key=lambda s: (s.rank[0], slack(s), s.rank[2]))


def fair_share(
    waiting: list[Sequence], now: float, cost: StepCostModel, served: dict[str, int]
) -> list[Sequence]:
    """Round-robin over clients: every client's oldest request, then every client's second, ...;
    within a round the client served the fewest tokens so far goes first."""
    turn: dict[str, int] = {}
    keyed = []
    for s in sorted(waiting, key=lambda s: s.rank[2]):
        client = s.request.spec.client_id
        k = turn.get(client, 0)
        turn[client] = k + 1
        keyed.append(((s.rank[0], k, served.get(client, 0), s.rank[2]), s))
    keyed.sort(key=lambda pair: pair[0])
    return [s for _, s in keyed]


WaitingOrder = Callable[[list[Sequence], float, StepCostModel, dict[str, int]], list[Sequence]]

ORDERS: dict[str, WaitingOrder] = {
    "continuous": fcfs,
    "priority": by_priority,
    "fair": fair_share,
    "edf": earliest_deadline,
    "lrs": least_remaining_slack,
}
