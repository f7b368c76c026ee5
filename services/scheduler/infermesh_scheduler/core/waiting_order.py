"""The order in which waiting sequences are considered, one rule per policy, and the queue that
keeps them in it.

Every order starts with the priority class (LATENCY_CRITICAL first) and ends with the arrival
number, so equal requests are served first come, first served. continuous, priority and edf order
by a key fixed at admission, so the queue stays sorted as sequences arrive (a binary search per
insert, nothing per step); lrs and fair depend on the step-time model and on tokens served so far,
so they are sorted when a step asks.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from infermesh_scheduler.core.cost_model import StepCostModel
from infermesh_scheduler.core.sequence import Sequence

StaticKey = Callable[[Sequence], tuple]


def _fcfs_key(s: Sequence) -> tuple:
    return (s.rank[0], s.rank[2])


def _priority_key(s: Sequence) -> tuple:
    return s.rank


def _deadline_key(s: Sequence) -> tuple:
    return (s.rank[0], s.request.deadline_mono, s.rank[2])


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

STATIC_KEYS: dict[str, StaticKey] = {
    "continuous": _fcfs_key,
    "priority": _priority_key,
    "edf": _deadline_key,
}
DYNAMIC_ORDERS: dict[str, WaitingOrder] = {"fair": fair_share, "lrs": least_remaining_slack}


class WaitingQueue:
    """Sequences without device or CPU blocks, in the policy's order; also counts their tokens."""

    def __init__(self, policy: str) -> None:
        self._key = STATIC_KEYS.get(policy)
        self._dynamic = DYNAMIC_ORDERS.get(policy)
        self._items: list[Sequence] = []
        # Waiting sequences compute from scratch, so every token they hold is still to compute.
        self.num_tokens = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._items)

    def add(self, seq: Sequence) -> None:
        if self._key is None:
            self._items.append(seq)
        else:
            bisect.insort_right(self._items, seq, key=self._key)
        self.num_tokens += seq.num_tokens

    def remove(self, seq: Sequence) -> None:
        items = self._items
        if self._key is None:
            items.remove(seq)
        else:
            # Completions of one request share a key: search only among the equal keys.
            i = bisect.bisect_left(items, self._key(seq), key=self._key)
            while items[i] is not seq:
                i += 1
            del items[i]
        self.num_tokens -= seq.num_tokens

    def ordered(self, now: float, cost: StepCostModel, served: dict[str, int]) -> list[Sequence]:
        """The queue in policy order. For a static order this is the queue itself: do not add to
        or remove from the queue while iterating it, call take_front() after."""
        if self._dynamic is None:
            return self._items
        return self._dynamic(self._items, now, cost, served)

    def take_front(self, ordered: list[Sequence], count: int) -> None:
        """Remove the first count sequences of an ordered() list (the ones just admitted)."""
        if not count:
            return
        for seq in ordered[:count]:
            self.num_tokens -= seq.num_tokens
        if ordered is self._items:
            del self._items[:count]
        else:
            taken = {id(s) for s in ordered[:count]}
            self._items = [s for s in self._items if id(s) not in taken]

    def clear(self) -> list[Sequence]:
        items, self._items = self._items, []
        self.num_tokens = 0
        return items
