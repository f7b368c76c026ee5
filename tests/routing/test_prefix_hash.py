"""The shared block hash: stable across processes, chained, and a prefix property routing relies on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from infermesh_shared.prefix_hash import ROOT_PARENT_HASH, block_hash, first_block_hash, prefix_block_hashes

token_lists = st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=80)


def test_hash_is_the_same_in_another_process() -> None:
    # Python's hash() of a tuple would pass in one process and differ in the next; the frontend
    # and the scheduler are different processes.
    here = block_hash(0, list(range(16)))
    code = "from infermesh_shared.prefix_hash import block_hash; print(block_hash(0, list(range(16))))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert int(there) == here
    assert 0 <= here < 2**64


def test_first_block_and_chain() -> None:
    tokens = list(range(40))
    hashes = prefix_block_hashes(tokens, 16)
    assert len(hashes) == 2  # the partial third block is not hashed
    assert hashes[0] == block_hash(ROOT_PARENT_HASH, tokens[:16]) == first_block_hash(tokens, 16)
    assert hashes[1] == block_hash(hashes[0], tokens[16:32])
    assert hashes[1] != block_hash(ROOT_PARENT_HASH, tokens[16:32])
    assert first_block_hash(tokens[:15], 16) is None
    assert prefix_block_hashes(tokens, 16, max_blocks=1) == hashes[:1]


def test_same_numbers_as_the_scheduler_core() -> None:
    # The scheduler reports these hashes; the frontend must compute identical ones.
    from infermesh_scheduler.core.block_hash import hash_prompt_blocks

    tokens = [(7 * i + 3) % 251 for i in range(70)]
    for block_size in (1, 4, 16):
        assert prefix_block_hashes(tokens, block_size) == hash_prompt_blocks(tokens, block_size)


def test_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_size"):
        prefix_block_hashes([1, 2, 3], 0)


@given(token_lists, token_lists, st.integers(min_value=1, max_value=8))
def test_hashes_of_a_longer_sequence_extend_the_prefix_hashes(prefix, suffix, block_size) -> None:
    aligned = prefix[: len(prefix) - len(prefix) % block_size]
    longer = prefix_block_hashes(aligned + suffix, block_size)
    assert longer[: len(aligned) // block_size] == prefix_block_hashes(aligned, block_size)


@given(token_lists, token_lists, st.integers(min_value=1, max_value=8))
def test_different_first_blocks_hash_differently(a, b, block_size) -> None:
    if len(a) >= block_size and len(b) >= block_size and a[:block_size] != b[:block_size]:
        assert first_block_hash(a, block_size) != first_block_hash(b, block_size)
