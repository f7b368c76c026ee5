"""n > 1: completions share the prompt's blocks and copy the block they first write to."""

from __future__ import annotations

from infermesh_scheduler.core import FinishReason

from tests.scheduler_core.builders import assert_all_blocks_free, make_pair, make_spec, step


def test_forked_completions_share_prompt_blocks_and_copy_the_last_one():
    sched, worker = make_pair(enable_cow=True, block_size=4)
    prompt = list(range(1, 11))  # blocks [0..3], [4..7], [8, 9]: the last is partial
    sched.add_request(make_spec("p", prompt, 5, n=3))
    plan = sched.schedule()
    assert len(plan.new_sequences) == 1
    parent_blocks = plan.new_sequences[0].block_ids
    tokens: dict = {}
    for out in sched.update(plan, worker.execute(plan)):
        tokens.setdefault(out.index, []).extend(out.new_token_ids)
    pool = sched.kv.gpu_pool
    assert [pool.refcount[b] for b in parent_blocks] == [3, 3, 3]
    plan = sched.schedule()
    children = plan.new_sequences
    assert len(children) == 2
    for child in children:
        assert (
            child.num_computed_tokens == 9
            and child.num_scheduled_tokens == 1
            and child.num_output_tokens == 0
        )
        assert child.block_ids[:2] == parent_blocks[:2] and child.block_ids[2] != parent_blocks[2]
    assert sorted(m.dst for m in plan.copy) == sorted(c.block_ids[2] for c in children)
    assert [m.src for m in plan.copy] == [parent_blocks[2]] * 2
    for out in sched.update(plan, worker.execute(plan)):
        tokens.setdefault(out.index, []).extend(out.new_token_ids)
    sched.check_invariants()
    assert [pool.refcount[b] for b in parent_blocks] == [3, 3, 1]
    usage = None
    for _ in range(20):
        for out in step(sched, worker):
            tokens.setdefault(out.index, []).extend(out.new_token_ids)
            if out.finish_reason:
                assert out.finish_reason is FinishReason.LENGTH
            usage = out.usage or usage
        if not sched.has_work():
            break
    assert sorted(tokens) == [0, 1, 2] and all(len(t) == 5 for t in tokens.values())
    assert usage.completion_tokens == 15 and usage.prompt_tokens == 10
    assert_all_blocks_free(sched)


def test_abort_before_fork_ends_every_completion():
    sched, worker = make_pair(enable_cow=True)
    sched.add_request(make_spec("p", [1, 2, 3], 5, n=3))
    outs = sched.abort_request("p")
    assert sorted(o.index for o in outs) == [0, 1, 2] and outs[-1].usage is not None
    sched.check_invariants()


def test_seeded_completions_each_get_their_own_seed():
    # The worker draws a seeded request's noise from (seed, position): equal seeds would make
    # every completion of an n > 1 request the same.
    import dataclasses

    sched, worker = make_pair(enable_cow=True, block_size=4)
    spec = make_spec("s", list(range(1, 8)), 3, n=3)
    spec.sampling = dataclasses.replace(spec.sampling, seed=41, temperature=1.0)
    sched.add_request(spec)
    seeds = {}
    while sched.has_work():
        plan = sched.schedule()
        for new in plan.new_sequences:
            seeds[new.seq_id] = new.sampling.seed
        sched.update(plan, worker.execute(plan))
    assert sorted(seeds.values()) == [41, 42, 43]
    assert_all_blocks_free(sched)
