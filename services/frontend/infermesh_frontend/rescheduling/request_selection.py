"""Which requests leave a source replica: seed 001's selection orders and rules.

Orders (`rescheduling_req_select_order`) rank the candidates of one replica:
  LCR   last come running: running requests, most recent arrival first
  FCR   first come running: running requests, earliest arrival first
  LR    longest running: running requests, most tokens (KV held) first
  SR    shortest running: running requests, fewest tokens first
  FCW   first come waiting: waiting requests (no KV to copy), earliest arrival first
  FCWSR waiting requests first come first, then running requests shortest first
Ties keep arrival order, then request id, so a decision is reproducible.

Rules (`rescheduling_req_select_rule`) say how much of that ranking moves, bounded by
`rescheduling_req_select_value`:
  NUM_REQ  the first `value` requests
  TOKEN    requests in order while their tokens together stay within `value` tokens
  RATIO    requests in order while their KV blocks together stay within `value` of the replica's
           blocks (a fraction, 0 < value <= 1)
A request that would overshoot the budget ends the selection: moving it would move more than asked.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from infermesh_shared.config.validate import select_value_errors


class SelectOrder(enum.StrEnum):
    LCR = "LCR"
    FCR = "FCR"
    LR = "LR"
    SR = "SR"
    FCW = "FCW"
    FCWSR = "FCWSR"


class SelectRule(enum.StrEnum):
    NUM_REQ = "NUM_REQ"
    TOKEN = "TOKEN"
    RATIO = "RATIO"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One request on a source replica, as its load report lists it."""

    request_id: str
    # Arrival on that replica, in its own clock (only the order matters).
    arrival: float
    # Tokens whose KV the request holds (prompt + output so far); a waiting request's prompt length.
    num_tokens: int
    # KV blocks it holds (0 while waiting).
    num_blocks: int
    running: bool


def _arrival(c: Candidate) -> tuple[float, str]:
    return (c.arrival, c.request_id)


def order_candidates(candidates: Sequence[Candidate], order: SelectOrder) -> list[Candidate]:
    running = [c for c in candidates if c.running]
    waiting = sorted((c for c in candidates if not c.running), key=_arrival)
    match order:
        case SelectOrder.LCR:
            return sorted(running, key=lambda c: (-c.arrival, c.request_id))
        case SelectOrder.FCR:
            return sorted(running, key=_arrival)
        case SelectOrder.LR:
            return sorted(running, key=lambda c: (-c.num_tokens, *_arrival(c)))
        case SelectOrder.SR:
            return sorted(running, key=lambda c: (c.num_tokens, *_arrival(c)))
        case SelectOrder.FCW:
            return waiting
        case SelectOrder.FCWSR:
            return waiting + sorted(running, key=lambda c: (c.num_tokens, *_arrival(c)))
    raise ValueError(f"unknown selection order {order!r}")


def check_select_value(rule: SelectRule, value: float) -> str:
    """Why `value` cannot bound `rule`; "" when it can (the config's own rule)."""
    return "; ".join(select_value_errors(rule.value, value))


def select_requests(
    candidates: Sequence[Candidate],
    order: SelectOrder,
    rule: SelectRule,
    value: float,
    total_blocks: int,
) -> list[Candidate]:
    """The requests to move off one replica whose KV pool has `total_blocks` blocks."""
    reason = check_select_value(rule, value)
    if reason:
        raise ValueError(reason)
    ranked = order_candidates(candidates, order)
    if rule is SelectRule.NUM_REQ:
        return ranked[: int(value)]
    chosen: list[Candidate] = []
    used = 0.0
    for candidate in ranked:
        if rule is SelectRule.TOKEN:
            cost = float(candidate.num_tokens)
        else:
            cost = candidate.num_blocks / total_blocks if total_blocks else 1.0
        if used + cost > value:
            break
        used += cost
        chosen.append(candidate)
    return chosen
