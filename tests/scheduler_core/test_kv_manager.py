"""KVManager on its own: the block arithmetic, prefix hits, copy-on-write and swap moves."""

from __future__ import annotations

import pytest
from infermesh_scheduler.core.kv_manager import KVManager, request_worst_blocks
from infermesh_scheduler.core.sequence import RequestState, Sequence

from tests.scheduler_core.builders import make_config, make_spec


def _seq(seq_id: int, prompt: list[int], max_tokens: int = 8, n: int = 1) -> Sequence:
    req = RequestState(
        spec=make_spec(f"r{seq_id}", prompt, max_tokens, n=n),
        arrival_seq=seq_id,
        priority=0,
        class_rank=2,
        deadline_mono=0.0,
    )
    seq = Sequence(seq_id, req, 0, list(prompt), len(prompt), (2, 0, seq_id))
    req.sequences.append(seq)
    return seq


def _compute(kv: KVManager, seq: Sequence, n: int) -> None:
    """What update() does after the worker computed n tokens of seq."""
    seq.num_computed_tokens += n
    kv.cache_full_blocks(seq)


def test_block_arithmetic():
    kv = KVManager(make_config(block_size=4, num_blocks=32))
    assert [kv.blocks_for(t) for t in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    # 10 prompt + 6 output = 16 tokens = 4 blocks; each of 2 more children owns blocks 2..3.
    assert request_worst_blocks(10, 6, 3, 4) == 4 + 2 * 2
    seq = _seq(1, list(range(1, 11)), max_tokens=6)
    kv.allocate(seq, [], 10)
    assert len(seq.block_ids) == 3 and kv.num_free == 29
    assert kv.future_blocks(seq) == 1
    seq.num_computed_tokens = 10
    assert kv.growth(seq, 1) == 0 and kv.growth(seq, 3) == 1


def test_prefix_hit_shares_blocks_and_never_the_last_token_block():
    kv = KVManager(make_config(block_size=4, num_blocks=16))
    first = _seq(1, list(range(1, 10)))  # 9 tokens: 2 full blocks and one partial
    kv.allocate(first, kv.match_prefix(first), 9)
    _compute(kv, first, 9)
    same = _seq(2, list(range(1, 10)))
    hits = kv.match_prefix(same)
    assert hits == first.block_ids[:2]
    exact = _seq(3, list(range(1, 9)))  # 8 tokens: its second block holds the last token
    assert kv.match_prefix(exact) == first.block_ids[:1]
    kv.allocate(same, hits, 1)
    assert [kv.refcount(b) for b in first.block_ids] == [2, 2, 1]
    assert same.num_computed_tokens == 8
    kv.free(first)
    kv.free(same)
    kv.check_invariants([], [])
    assert kv.num_free == 16 and kv.num_evictable == 2  # the full blocks stay cached


def test_fork_copies_the_shared_last_prompt_block_on_first_write():
    kv = KVManager(make_config(block_size=4, num_blocks=16, enable_cow=True))
    parent = _seq(1, list(range(1, 11)), n=2)
    kv.allocate(parent, [], 10)
    _compute(kv, parent, 10)
    child = Sequence(2, parent.request, 1, list(parent.token_ids), 10, parent.rank)
    kv.fork(parent, child)
    assert child.block_ids == parent.block_ids and child.cow_block_index == 2
    assert kv.growth(child, 1) == 1
    moves = kv.grow(child, 1)
    assert [(m.src, m.dst) for m in moves] == [(parent.block_ids[2], child.block_ids[2])]
    assert child.block_ids[:2] == parent.block_ids[:2] and child.block_ids[2] != parent.block_ids[2]
    kv.check_invariants([parent, child], [])
    kv.free(child)
    kv.free(parent)
    kv.check_invariants([], [])


def test_swap_out_and_in_round_trip():
    kv = KVManager(make_config(block_size=4, num_blocks=8, enable_swap=True, num_cpu_blocks=8))
    seq = _seq(1, list(range(1, 7)))
    kv.allocate(seq, [], 6)
    seq.sent = True
    device = list(seq.block_ids)
    assert kv.can_swap_out(seq)
    out = kv.swap_out(seq)
    assert [m.src for m in out] == device and not seq.block_ids and kv.num_free == 8
    assert kv.num_free_cpu == 6
    kv.check_invariants([], [seq])
    back = kv.swap_in(seq, 1)
    assert [m.src for m in back] == [m.dst for m in out] and len(seq.block_ids) == 2
    assert kv.num_free_cpu == 8
    kv.check_invariants([seq], [])
    kv.free(seq)
    assert kv.num_free == 8


def test_reserve_adopt_export_for_a_sequence_moving_in():
    kv = KVManager(make_config(block_size=4, num_blocks=8))
    blocks = kv.reserve(10)  # 10 computed tokens elsewhere: 3 blocks to copy them into
    assert len(blocks) == 3 and kv.num_free == 5
    kv.check_invariants([], [])  # reserved blocks are held, by no sequence yet
    seq = _seq(1, list(range(1, 11)))
    seq.token_ids.append(42)  # one generated token, not computed yet
    kv.adopt(seq, blocks, 10)
    assert seq.block_ids == blocks and seq.num_computed_tokens == 10
    assert kv.export_block_ids(seq) == blocks
    kv.check_invariants([seq], [])
    assert kv.growth(seq, 1) == 0  # the 11th token fits in the third block
    kv.free(seq)  # handed over elsewhere again
    assert kv.num_free == 8
    kv.check_invariants([], [])


def test_released_reservation_returns_its_blocks():
    kv = KVManager(make_config(block_size=4, num_blocks=8))
    blocks = kv.reserve(5)
    kv.release_reserved(blocks)
    assert kv.num_free == 8
    kv.check_invariants([], [])
    with pytest.raises(ValueError, match="not reserved"):
        kv.release_reserved(blocks)
