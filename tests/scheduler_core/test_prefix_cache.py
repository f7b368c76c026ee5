"""Prefix cache: shared full blocks, hit accounting, LRU eviction within capacity."""

from __future__ import annotations

from infermesh_scheduler.core.block_hash import hash_prompt_blocks

from tests.scheduler_core.builders import (
    assert_all_blocks_free,
    make_pair,
    make_spec,
    run_to_completion,
    step,
)


def test_32_requests_sharing_a_256_token_prefix_all_but_the_first_hit():
    sched, worker = make_pair(
        block_size=16,
        num_blocks=1024,
        max_tokens_per_step=8192,
        max_batch_size=64,
        chunk_size=8192,
        max_chunk_size=8192,
        prefix_cache_capacity=100_000,
    )
    prefix = [(i * 37) % 49 + 1 for i in range(256)]
    sched.add_request(make_spec("r0", prefix + [1, 2, 3], 4))
    step(sched, worker)  # r0's prefill has run and its full blocks are cached
    for i in range(1, 32):
        sched.add_request(make_spec(f"r{i}", prefix + [i % 40 + 5, 7], 4))
    plan = sched.schedule()
    assert all(new.num_computed_tokens == 256 for new in plan.new_sequences)
    usage = {}
    for out in sched.update(plan, worker.execute(plan)):
        assert out.usage is None
    for _ in range(50):
        if not sched.has_work():
            break
        for out in step(sched, worker):
            if out.usage:
                usage[out.request_id] = out.usage.cached_prompt_tokens
    assert usage["r0"] == 0
    assert all(usage[f"r{i}"] == 256 for i in range(1, 32))
    load = sched.load()
    assert load.prefix_cache_hits == 31 * 256
    assert load.prefix_cache_queries == 259 + 31 * 258
    assert hash_prompt_blocks(prefix, 16)[0] in load.cached_prefix_hashes
    assert_all_blocks_free(sched)


def test_whole_cached_prompt_still_computes_its_last_block():
    sched, worker = make_pair(block_size=4)
    prompt = list(range(1, 13))  # three full blocks
    sched.add_request(make_spec("a", prompt, 2))
    first = run_to_completion(sched, worker)
    sched.add_request(make_spec("b", prompt, 2))
    plan = sched.schedule()
    new = plan.new_sequences[0]
    assert new.num_computed_tokens == 8 and new.num_scheduled_tokens == 4
    sched.update(plan, worker.execute(plan))
    rest = run_to_completion(sched, worker)
    assert first[("a", 0)][0] == worker.next_token(prompt)
    assert rest[("b", 0)][0] == first[("a", 0)][1]  # same history -> same next token
    assert_all_blocks_free(sched)


def test_unreferenced_cached_blocks_are_evicted_lru_within_capacity():
    sched, worker = make_pair(block_size=4, num_blocks=12, prefix_cache_capacity=16)  # 4 blocks
    for name, base in (("a", 1), ("b", 20), ("c", 40)):
        sched.add_request(make_spec(name, [base + i for i in range(9)], 1))
        run_to_completion(sched, worker)
        sched.check_invariants()
    assert sched.load().cached_blocks <= 4
    # "a" was least recently used: its blocks are gone, "c"'s remain.
    sched.add_request(make_spec("a2", [1 + i for i in range(9)], 1))
    sched.add_request(make_spec("c2", [40 + i for i in range(9)], 1))
    plan = sched.schedule()
    computed = {new.seq_id: new.num_computed_tokens for new in plan.new_sequences}
    assert sorted(computed.values()) == [0, 8]
    sched.update(plan, worker.execute(plan))
    run_to_completion(sched, worker)
    assert_all_blocks_free(sched)


def test_cache_disabled_shares_nothing():
    sched, worker = make_pair(enable_prefix_cache=False)
    for name in ("a", "b"):
        sched.add_request(make_spec(name, list(range(1, 20)), 2))
        run_to_completion(sched, worker)
    load = sched.load()
    assert load.prefix_cache_hits == 0 and load.cached_blocks == 0 and load.free_blocks == load.total_blocks
