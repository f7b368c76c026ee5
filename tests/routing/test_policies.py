"""Routing policies over load snapshots: pure, deterministic where frontends must agree."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from infermesh_frontend.routing import (
    LeastLoadPolicy,
    PrefixAwarePolicy,
    ReplicaLoad,
    RoundRobinPolicy,
    RouteRequest,
    SessionAffinityPolicy,
    make_routing_policy,
)
from infermesh_shared.prefix_hash import first_block_hash

BLOCK = 4


def replicas(*loads: int) -> list[ReplicaLoad]:
    return [
        ReplicaLoad(f"10.0.0.{index}:50051", num_running=load, free_blocks=100, total_blocks=100)
        for index, load in enumerate(loads)
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_cycles_and_survives_membership_change() -> None:
    policy = RoundRobinPolicy()
    pool = replicas(0, 0, 0)
    picks = [policy.pick(RouteRequest(), pool).address for _ in range(6)]
    assert Counter(picks) == {r.address: 2 for r in pool}
    assert policy.pick(RouteRequest(), pool[:1]) is pool[0]
    assert policy.pick(RouteRequest(), []) is None


def test_least_load_picks_fewest_requests_then_free_blocks() -> None:
    pool = replicas(3, 1, 2)
    assert LeastLoadPolicy().pick(RouteRequest(), pool) is pool[1]
    tied = replicas(1, 1)
    tied[0].free_blocks = 10
    assert LeastLoadPolicy().pick(RouteRequest(), tied) is tied[1]


def test_least_load_local_account_spreads_a_burst_between_polls() -> None:
    pool = replicas(0, 0)
    policy = LeastLoadPolicy()
    for _ in range(10):
        policy.pick(RouteRequest(), pool).own_in_flight += 1
    assert [r.num_requests for r in pool] == [5, 5]
    pool[0].own_in_flight -= 5
    assert policy.pick(RouteRequest(), pool) is pool[0]


loads = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 1000), st.integers(0, 100)),
    min_size=1,
    max_size=8,
)


@given(loads)
def test_least_load_result_is_minimal(figures) -> None:
    pool = [
        ReplicaLoad(
            f"r{i}:1", num_waiting=w, num_running=r, num_waiting_tokens=t, free_blocks=f, total_blocks=100
        )
        for i, (w, r, t, f) in enumerate(figures)
    ]
    chosen = LeastLoadPolicy().pick(RouteRequest(), pool)
    assert all(chosen.load_key() <= replica.load_key() for replica in pool)


def prompt(first: int, length: int = 12) -> list[int]:
    return [first] * BLOCK + list(range(100, 100 + length - BLOCK))


def test_prefix_aware_follows_remote_cache_then_local_memory() -> None:
    pool = replicas(2, 0)
    policy = PrefixAwarePolicy(BLOCK)
    request = RouteRequest(prompt(7))
    # Nobody holds it: least load.
    assert policy.pick(request, pool) is pool[1]
    # Remembered: the same prefix goes back there even when it is no longer the least loaded.
    pool[1].num_running = 3
    assert policy.pick(RouteRequest(prompt(7, 20)), pool) is pool[1]
    # A fresh frontend with no memory follows the replica's reported cache.
    fresh = PrefixAwarePolicy(BLOCK)
    pool[0].cached_prefix_hashes = frozenset({first_block_hash(prompt(9), BLOCK)})
    assert fresh.pick(RouteRequest(prompt(9)), pool) is pool[0]


def test_prefix_aware_falls_back_when_holder_overloaded_or_gone() -> None:
    pool = replicas(0, 0)
    policy = PrefixAwarePolicy(BLOCK, max_imbalance=2)
    assert policy.pick(RouteRequest(prompt(5)), pool) is pool[0]
    pool[0].num_running = 3
    assert policy.pick(RouteRequest(prompt(5)), pool) is pool[1]
    # The prefix now lives on the second replica too; with the first gone it stays there.
    assert policy.pick(RouteRequest(prompt(5)), pool[1:]) is pool[1]
    # Out of KV blocks counts as overloaded as well.
    pool = replicas(0, 0)
    policy = PrefixAwarePolicy(BLOCK)
    policy.pick(RouteRequest(prompt(6)), pool)
    pool[0].free_blocks = 1
    assert policy.pick(RouteRequest(prompt(6)), pool) is pool[1]


def test_prefix_aware_without_block_size_or_full_block_routes_by_load() -> None:
    pool = replicas(1, 0)
    assert PrefixAwarePolicy(0).pick(RouteRequest(prompt(1)), pool) is pool[1]
    assert PrefixAwarePolicy(BLOCK).pick(RouteRequest([1, 2]), pool) is pool[1]


def test_prefix_aware_memory_is_bounded() -> None:
    policy = PrefixAwarePolicy(BLOCK, memory_capacity=5, max_prefix_blocks=1)
    pool = replicas(0, 0)
    for first in range(20):
        policy.pick(RouteRequest(prompt(first)), pool)
    assert len(policy._memory) == 5


def test_session_sticks_and_rehashes_when_its_replica_dies() -> None:
    pool = replicas(0, 0, 0)
    policy = SessionAffinityPolicy()
    first = policy.pick(RouteRequest(session_id="s1"), pool)
    for load in pool:
        load.num_running = 0 if load is not first else 40
    assert all(policy.pick(RouteRequest(session_id="s1"), pool) is first for _ in range(5))
    survivors = [r for r in pool if r is not first]
    moved = policy.pick(RouteRequest(session_id="s1"), survivors)
    assert moved in survivors
    # It stays on the new replica, even after the old one is back.
    assert policy.pick(RouteRequest(session_id="s1"), pool) is moved


def test_session_without_id_uses_least_load() -> None:
    pool = replicas(4, 1)
    assert SessionAffinityPolicy().pick(RouteRequest(), pool) is pool[1]


def test_two_frontends_agree_on_a_new_session() -> None:
    pool = replicas(0, 0, 0, 0)
    a, b = SessionAffinityPolicy(), SessionAffinityPolicy()
    for index in range(50):
        request = RouteRequest(session_id=f"s{index}")
        assert a.pick(request, pool) is b.pick(request, pool)
    spread = Counter(a.pick(RouteRequest(session_id=f"s{i}"), pool).address for i in range(50))
    assert len(spread) == 4


def test_session_expiry_and_cap() -> None:
    clock = FakeClock()
    policy = SessionAffinityPolicy(ttl_s=10, max_sessions=3, clock=clock)
    pool = replicas(0, 0)
    for index in range(5):
        policy.pick(RouteRequest(session_id=f"s{index}"), pool)
    assert len(policy) == 3
    clock.now = 11
    policy.pick(RouteRequest(session_id="late"), pool)
    assert len(policy) == 1


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=30, unique=True), st.integers(0, 3))
def test_removing_a_replica_moves_only_its_sessions(session_ids, dead_index) -> None:
    pool = replicas(0, 0, 0, 0)
    policy = SessionAffinityPolicy()
    before = {sid: policy.pick(RouteRequest(session_id=sid), pool).address for sid in session_ids}
    dead = pool[dead_index].address
    survivors = [r for r in pool if r.address != dead]
    after = {sid: policy.pick(RouteRequest(session_id=sid), survivors).address for sid in session_ids}
    for sid in session_ids:
        assert after[sid] != dead
        if before[sid] != dead:
            assert after[sid] == before[sid]


def test_factory() -> None:
    assert make_routing_policy("prefix_aware", block_size=16).block_size == 16
    for name in ("round_robin", "least_load", "session"):
        assert make_routing_policy(name).name == name
    with pytest.raises(ValueError, match="expected one of round_robin"):
        make_routing_policy("random")
