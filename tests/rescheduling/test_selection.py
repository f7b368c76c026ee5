"""Seed 001's request selection (orders, rules) and decode_load's replica filters on hand-built tables."""

from __future__ import annotations

import pytest
from infermesh.v1 import scheduler_pb2
from infermesh_frontend.rescheduling.load_policy import (
    LoadedReplica,
    LoadMetric,
    load_value,
    pair_replicas,
    split_sources_destinations,
)
from infermesh_frontend.rescheduling.request_selection import (
    Candidate,
    SelectOrder,
    SelectRule,
    check_select_value,
    order_candidates,
    select_requests,
)

# One source replica with 100 blocks of 16 tokens: four running requests and two waiting ones.
#            id     arrival  tokens blocks running
TABLE = [
    Candidate("r1", 1.0, 300, 19, True),
    Candidate("r2", 2.0, 40, 3, True),
    Candidate("r3", 3.0, 900, 57, True),
    Candidate("r4", 4.0, 40, 3, True),
    Candidate("w1", 5.0, 64, 0, False),
    Candidate("w2", 0.5, 128, 0, False),
]


def ids(candidates) -> list[str]:
    return [c.request_id for c in candidates]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (SelectOrder.LCR, ["r4", "r3", "r2", "r1"]),
        (SelectOrder.FCR, ["r1", "r2", "r3", "r4"]),
        (SelectOrder.LR, ["r3", "r1", "r2", "r4"]),  # r2/r4 tie on tokens: earlier arrival first
        (SelectOrder.SR, ["r2", "r4", "r1", "r3"]),
        (SelectOrder.FCW, ["w2", "w1"]),
        (SelectOrder.FCWSR, ["w2", "w1", "r2", "r4", "r1", "r3"]),
    ],
)
def test_each_order_ranks_the_candidates_as_its_name_says(order, expected):
    assert ids(order_candidates(TABLE, order)) == expected
    assert ids(order_candidates(list(reversed(TABLE)), order)) == expected  # input order is irrelevant


def test_num_req_takes_the_first_n_of_the_order():
    assert ids(select_requests(TABLE, SelectOrder.LR, SelectRule.NUM_REQ, 2, 100)) == ["r3", "r1"]
    assert ids(select_requests(TABLE, SelectOrder.FCW, SelectRule.NUM_REQ, 5, 100)) == ["w2", "w1"]


def test_token_takes_requests_while_their_tokens_fit_the_budget():
    # SR with the seed's default budget of 1,024 tokens: 40 + 40 + 300 = 380; r3 (900) would overshoot.
    assert ids(select_requests(TABLE, SelectOrder.SR, SelectRule.TOKEN, 1024, 100)) == ["r2", "r4", "r1"]
    assert ids(select_requests(TABLE, SelectOrder.SR, SelectRule.TOKEN, 80, 100)) == ["r2", "r4"]
    # The first request alone is over budget: nothing moves (moving it would move more than asked).
    assert select_requests(TABLE, SelectOrder.LR, SelectRule.TOKEN, 899, 100) == []
    assert ids(select_requests(TABLE, SelectOrder.LR, SelectRule.TOKEN, 900, 100)) == ["r3"]


def test_ratio_takes_requests_while_their_blocks_fit_the_fraction_of_the_pool():
    # FCR: r1 19% + r2 3% = 22% <= 25%; r3 (57%) would overshoot.
    assert ids(select_requests(TABLE, SelectOrder.FCR, SelectRule.RATIO, 0.25, 100)) == ["r1", "r2"]
    assert ids(select_requests(TABLE, SelectOrder.FCR, SelectRule.RATIO, 0.18, 100)) == []
    assert ids(select_requests(TABLE, SelectOrder.LR, SelectRule.RATIO, 1.0, 100)) == ["r3", "r1", "r2", "r4"]


def test_values_a_rule_cannot_use_are_refused_with_the_reason():
    assert "positive" in check_select_value(SelectRule.TOKEN, 0)
    assert "fraction" in check_select_value(SelectRule.RATIO, 2)
    assert "whole number" in check_select_value(SelectRule.NUM_REQ, 1.5)
    assert check_select_value(SelectRule.TOKEN, 1024) == ""
    with pytest.raises(ValueError, match="fraction"):
        select_requests(TABLE, SelectOrder.SR, SelectRule.RATIO, 3, 100)


LOADS = [
    LoadedReplica("a", 1.40),
    LoadedReplica("b", 0.20),
    LoadedReplica("c", 1.05),
    LoadedReplica("d", 0.95),
    LoadedReplica("e", 1.90, serving=False),
    LoadedReplica("f", 0.10, serving=False),
]


def test_decode_load_sources_are_at_or_above_the_threshold_destinations_below():
    sources, destinations = split_sources_destinations(LOADS, 1.0)
    assert [r.address for r in sources] == ["a", "c"]  # most loaded first; e is not serving
    assert [r.address for r in destinations] == ["b", "d"]  # least loaded first; f is not serving
    sources, destinations = split_sources_destinations([LoadedReplica("x", 1.0)], 1.0)
    assert [r.address for r in sources] == ["x"] and destinations == []


def test_decode_load_pairs_most_with_least_loaded_while_the_gap_exceeds_the_balance_threshold():
    pairs = pair_replicas(LOADS, 1.0, 0.0)
    assert [(p.source.address, p.destination.address) for p in pairs] == [("a", "b"), ("c", "d")]
    # c - d = 0.10 is not more than 0.20: only the first pair forms.
    pairs = pair_replicas(LOADS, 1.0, 0.20)
    assert [(p.source.address, p.destination.address) for p in pairs] == [("a", "b")]
    assert pair_replicas(LOADS, 1.0, 1.5) == []
    assert pair_replicas([LoadedReplica("a", 0.5), LoadedReplica("b", 0.1)], 1.0, 0.0) == []


def test_load_metrics_read_from_a_get_load_answer():
    report = scheduler_pb2.GetLoadResponse(
        num_waiting=3,
        num_running=5,
        num_preempted=1,
        total_blocks=100,
        free_blocks=30,
        cached_blocks=10,
        kv_cache_usage_ratio_projected=1.25,
    )
    assert load_value(LoadMetric.KV_CACHE_USAGE_RATIO_PROJECTED, report) == pytest.approx(1.25)
    assert load_value(LoadMetric.KV_CACHE_USAGE_RATIO, report) == pytest.approx(0.60)
    assert load_value(LoadMetric.NUM_REQUESTS, report) == 9
    assert load_value(LoadMetric.NUM_WAITING_REQUESTS, report) == 3
    assert load_value(LoadMetric.KV_CACHE_USAGE_RATIO, scheduler_pb2.GetLoadResponse()) == 0.0


def test_the_scheduler_reports_its_projected_usage_in_get_load():
    from infermesh_scheduler.core.load import LoadSnapshot
    from infermesh_scheduler.load_response import load_response

    snapshot = LoadSnapshot(1, 2, 0, 10, 5, 0, 0, 0, 4, 0, [], kv_cache_usage_ratio_projected=1.25)
    report = load_response(snapshot, serving=True)
    assert load_value(LoadMetric.KV_CACHE_USAGE_RATIO_PROJECTED, report) == pytest.approx(1.25)
