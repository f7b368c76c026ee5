"""Live migration in the core between two schedulers, each with its simulated worker.

The simulated workers check every step's KV read through the block table against the tokens, so a
block copied wrong, or a sequence adopted with the wrong computed count, fails the run. Copying
is done here the way worker SendKVBlocks does it: the source's device blocks into the blocks the
destination reserved.
"""

from __future__ import annotations

import pytest
from infermesh_scheduler.core import migration
from infermesh_scheduler.core.migration import MigrationRefused

from tests.scheduler_core.builders import (
    assert_all_blocks_free,
    collect,
    make_pair,
    make_spec,
    run_to_completion,
    step,
)

PROMPT = [7, 3, 9, 1, 4, 4, 2, 8, 6, 5]  # 10 tokens: two full blocks of 4 and a partial one


def copy_blocks(src_worker, dst_worker, src: list[int], dst: list[int]) -> None:
    for s, d in zip(src, dst, strict=True):
        dst_worker.device[d] = list(src_worker.device[s])


@pytest.mark.parametrize("inflight", [1, 2])
def test_a_migrated_request_continues_on_the_destination_without_recompute(inflight):
    reference, ref_worker = make_pair(max_inflight_plans=inflight)
    reference.add_request(make_spec("r", PROMPT, 14))
    expected = run_to_completion(reference, ref_worker)[("r", 0)]

    source, src_worker = make_pair(max_inflight_plans=inflight)
    dest, dst_worker = make_pair(max_inflight_plans=inflight)
    dest.add_request(make_spec("other", [1, 2, 3], 3))  # the destination is busy with its own work
    tokens: dict = {}
    source.add_request(make_spec("r", PROMPT, 14))
    for _ in range(4):
        collect(step(source, src_worker), tokens)
    migration.start_out(source, "r")
    copied: list[int] = []
    reserved = migration.reserve_in(dest, 0)
    # Stage 1 and 2: complete blocks while the source keeps decoding.
    for _ in range(2):
        full = migration.complete_blocks(source, "r")
        seq_tokens = len(full) * 4
        reserved = migration.extend_in(dest, reserved, seq_tokens)
        copy_blocks(src_worker, dst_worker, full[len(copied) :], reserved[len(copied) : len(full)])
        copied = full
        for _ in range(3):
            collect(step(source, src_worker), tokens)
            collect(step(dest, dst_worker), tokens)
    # Final stop-and-copy: hold, wait until no plan carries it, copy the rest.
    migration.hold(source, "r")
    while not migration.is_quiet(source, "r"):
        collect(step(source, src_worker), tokens)
    blocks, computed = migration.final_blocks(source, "r")
    reserved = migration.extend_in(dest, reserved, computed + 1)
    copy_blocks(src_worker, dst_worker, blocks[len(copied) :], reserved[len(copied) : len(blocks)])
    before = dict(tokens)
    collect(step(source, src_worker), tokens)
    assert tokens == before, "a held request produced a token"
    moved = migration.hand_over(source, "r")
    assert moved.num_computed_tokens == computed
    assert "r" not in source._requests
    migration.adopt_in(dest, moved, reserved)

    planned_on_dest = 0
    while dest.has_work():
        plan = dest.schedule()
        # seq 0 is the destination's own request; the adopted one arrives as a NewSequence.
        planned_on_dest += sum(n.num_scheduled_tokens for n in plan.new_sequences if n.seq_id != 0)
        collect(dest.update(plan, dst_worker.execute(plan)), tokens)
        dest.check_invariants()
    run_to_completion(source, src_worker)
    assert tokens[("r", 0)] == expected
    # The destination computed only the last sampled token of the prompt + outputs: no prefill.
    assert planned_on_dest == 1
    assert_all_blocks_free(source)
    assert_all_blocks_free(dest)


def test_an_abort_during_migration_frees_both_sides():
    source, src_worker = make_pair()
    dest, _ = make_pair()
    source.add_request(make_spec("r", PROMPT, 20))
    for _ in range(3):
        step(source, src_worker)
    migration.start_out(source, "r")
    reserved = migration.reserve_in(dest, len(PROMPT) + 2)
    source.abort_request("r")
    with pytest.raises(MigrationRefused, match="not live"):
        migration.complete_blocks(source, "r")
    migration.release_in(dest, reserved)  # the service's cleanup when the source side fails
    run_to_completion(source, src_worker)
    assert_all_blocks_free(source)
    assert_all_blocks_free(dest)
    dest.check_invariants()


def test_a_cancelled_migration_leaves_the_request_running_on_the_source():
    reference, ref_worker = make_pair()
    reference.add_request(make_spec("r", PROMPT, 12))
    expected = run_to_completion(reference, ref_worker)[("r", 0)]

    source, src_worker = make_pair()
    tokens: dict = {}
    source.add_request(make_spec("r", PROMPT, 12))
    for _ in range(3):
        collect(step(source, src_worker), tokens)
    migration.start_out(source, "r")
    migration.hold(source, "r")
    collect(step(source, src_worker), tokens)
    migration.cancel_out(source, "r")  # e.g. the destination worker died mid-copy
    for key, value in run_to_completion(source, src_worker).items():
        tokens.setdefault(key, []).extend(value)
    assert tokens[("r", 0)] == expected
    assert_all_blocks_free(source)


def test_a_migrating_request_is_never_preempted():
    source, worker = make_pair(num_blocks=10, max_batch_size=4)
    source.add_request(make_spec("r", PROMPT, 20))
    step(source, worker)
    migration.start_out(source, "r")
    blocks = migration.complete_blocks(source, "r")
    source.add_request(make_spec("big", [5] * 20, 20))  # fills the pool: someone must yield
    for _ in range(12):
        step(source, worker)
        assert migration.complete_blocks(source, "r")[: len(blocks)] == blocks
    migration.cancel_out(source, "r")
    run_to_completion(source, worker)
    assert_all_blocks_free(source)


def test_what_cannot_migrate_is_refused_with_the_reason():
    sched, worker = make_pair(enable_cow=True)
    sched.add_request(make_spec("waiting", PROMPT, 5))
    with pytest.raises(MigrationRefused, match="only running requests migrate"):
        migration.start_out(sched, "waiting")
    sched.add_request(make_spec("pair", PROMPT, 5, n=2))
    with pytest.raises(MigrationRefused, match="only n = 1"):
        migration.start_out(sched, "pair")
    with pytest.raises(MigrationRefused, match="not live"):
        migration.start_out(sched, "nobody")
    step(sched, worker)
    migration.start_out(sched, "waiting")
    with pytest.raises(MigrationRefused, match="already migrating"):
        migration.start_out(sched, "waiting")
    with pytest.raises(MigrationRefused, match="hold it"):
        migration.final_blocks(sched, "waiting")
    small, _ = make_pair(num_blocks=4)
    with pytest.raises(MigrationRefused, match="no room"):
        migration.reserve_in(small, 64)
