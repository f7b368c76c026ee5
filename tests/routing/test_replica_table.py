"""The replica table: membership from discovery, health from polls, candidates for routing."""

from __future__ import annotations

from infermesh_frontend.routing import LoadReport, ReplicaHealth, ReplicaTable


def report(running: int = 0, serving: bool = True, hashes: frozenset[int] = frozenset()) -> LoadReport:
    return LoadReport(
        num_waiting=0,
        num_running=running,
        num_preempted=0,
        num_waiting_tokens=0,
        free_blocks=10,
        total_blocks=10,
        serving=serving,
        cached_prefix_hashes=hashes,
        prefix_cache_hits=0,
    )


def test_new_replica_is_not_routed_to_before_its_first_report() -> None:
    table = ReplicaTable()
    assert table.sync(["b:1", "a:1"]) == (["a:1", "b:1"], [])
    assert table.candidates() == []
    table.apply_report("b:1", report())
    assert [r.address for r in table.candidates()] == ["b:1"]
    assert table.health("a:1") is ReplicaHealth.UNKNOWN


def test_down_replica_leaves_and_comes_back() -> None:
    table = ReplicaTable()
    table.sync(["a:1", "b:1"])
    table.apply_report("a:1", report())
    table.apply_report("b:1", report())
    table.mark_down("a:1", "connection refused")
    assert [r.address for r in table.candidates()] == ["b:1"]
    table.apply_report("a:1", report())
    assert [r.address for r in table.candidates()] == ["a:1", "b:1"]
    assert [r.address for r in table.candidates(exclude={"a:1"})] == ["b:1"]


def test_serving_replicas_are_preferred_and_not_serving_ones_are_the_last_resort() -> None:
    table = ReplicaTable()
    table.sync(["a:1", "b:1"])
    table.apply_report("a:1", report(serving=False))
    table.apply_report("b:1", report())
    assert [r.address for r in table.candidates()] == ["b:1"]
    table.mark_down("b:1", "gone")
    assert [r.address for r in table.candidates()] == ["a:1"]


def test_local_account_counts_own_requests_exactly_and_others_as_reported() -> None:
    table = ReplicaTable()
    table.sync(["a:1"])
    table.apply_report("a:1", report(running=2))  # two requests of other frontends
    table.record_dispatch("a:1")
    table.record_dispatch("a:1")
    table.record_finish("a:1")
    assert table.load("a:1").num_requests == 3
    # The next report sees our open request plus one other: 2 = 1 other + ours.
    table.apply_report("a:1", report(running=2, hashes=frozenset({7})))
    assert table.load("a:1").num_requests == 2
    table.record_finish("a:1")
    assert table.load("a:1").num_requests == 1
    assert table.load("a:1").cached_prefix_hashes == {7}
    assert table.sync([]) == ([], ["a:1"])
    assert table.load("a:1") is None
    table.record_dispatch("a:1")  # a request to a replica that left is not an error
