"""One round's plan on hand-built load tables: drain, neutral_failover and decode_load, each
policy's sources and destinations, and the select rule/order/value applied to the source."""

from __future__ import annotations

from infermesh_frontend.rescheduling.load_policy import LoadMetric
from infermesh_frontend.rescheduling.round_plan import Move, plan_round, takers

from tests.rescheduling.fakes import options, report


def _any(_rid: str, _policy: str) -> bool:
    return True


def test_decode_load_moves_the_shortest_running_requests_from_the_loaded_to_the_idle_replica():
    reports = {
        "a:1": report(("r1", 300, 19), ("r2", 40, 3), ("r3", 900, 57), projected=1.2),
        "b:1": report(projected=0.1),
    }
    moves = plan_round(
        reports, options(rescheduling_req_select_rule="NUM_REQ", rescheduling_req_select_value=2), _any
    )
    # SR (the seed's default order): shortest first.
    assert moves == [Move("r2", "a:1", "b:1", "decode_load"), Move("r1", "a:1", "b:1", "decode_load")]


def test_decode_load_token_rule_stops_before_the_budget_is_overshot():
    reports = {"a:1": report(("r1", 300, 19), ("r2", 40, 3), ("r3", 900, 57), projected=1.5), "b:1": report()}
    moves = plan_round(reports, options(rescheduling_req_select_value=400), _any)
    assert [m.request_id for m in moves] == ["r2", "r1"]  # 40 + 300 <= 400; + 900 would not be


def test_decode_load_needs_a_source_at_the_threshold_and_a_gap_above_the_balance_threshold():
    reports = {"a:1": report(("r1", 30, 2), projected=0.9), "b:1": report(projected=0.1)}
    assert plan_round(reports, options(), _any) == []  # 0.9 < the seed's threshold 1.0
    low = options(rescheduling_decode_load_threshold=0.5, rescheduling_load_balance_threshold=0.9)
    assert plan_round(reports, low, _any) == []  # a gap of 0.8 is not worth it
    moves = plan_round(reports, options(rescheduling_decode_load_threshold=0.5), _any)
    assert moves == [Move("r1", "a:1", "b:1", "decode_load")]


def test_waiting_requests_never_move_and_ineligible_ones_are_skipped():
    reports = {"a:1": report(("r1", 30, 2), ("r2", 30, 2), projected=2.0, waiting=("w1",)), "b:1": report()}
    moves = plan_round(
        reports, options(rescheduling_req_select_order="FCWSR"), lambda rid, policy: rid != "r1"
    )
    assert [m.request_id for m in moves] == ["r2"]
    assert plan_round(reports, options(rescheduling_req_select_order="FCW"), _any) == []


def test_a_draining_replica_is_emptied_round_robin_onto_serving_replicas_least_loaded_first():
    reports = {
        "a:1": report(("r1", 30, 2), ("r2", 30, 2), ("r3", 30, 2), serving=False, draining=True),
        "b:1": report(projected=0.5),
        "c:1": report(projected=0.2),
        "d:1": report(projected=0.1, serving=False),  # not serving: takes nothing
    }
    moves = plan_round(reports, options(rescheduling_policies=("decode_load",)), _any)
    assert moves == [
        Move("r1", "a:1", "c:1", "drain"),
        Move("r2", "a:1", "b:1", "drain"),
        Move("r3", "a:1", "c:1", "drain"),
    ]


def test_neutral_failover_empties_a_replica_that_answers_but_does_not_serve_only_when_enabled():
    reports = {"a:1": report(("r1", 30, 2), serving=False), "b:1": report(projected=0.3)}
    assert plan_round(reports, options(rescheduling_policies=("decode_load",)), _any) == []
    moves = plan_round(reports, options(), _any)
    assert moves == [Move("r1", "a:1", "b:1", "neutral_failover")]
    # Destinations must be below the neutral threshold.
    assert plan_round(reports, options(rescheduling_neutral_load_threshold=0.2), _any) == []


def test_takers_orders_by_the_neutral_metric_and_drops_draining_ones():
    reports = {
        "a:1": report(("r1", 1, 1), ("r2", 1, 1)),
        "b:1": report(("r3", 1, 1)),
        "c:1": report(draining=True),
    }
    assert takers(reports, LoadMetric.NUM_REQUESTS, 10) == ["b:1", "a:1"]
    assert takers(reports, LoadMetric.NUM_REQUESTS, 2) == ["b:1"]
