"""The shared block hash: stable across processes, chained, and a prefix property routing relies on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from infermesh_shared.prefix_hash import ROOT_PARENT_HASH, block_hash, first_block_hash, prefix_block_hashes

# block_hash(0, [1, 2, 3, 4]) and, chained on it, block_hash(FIRST_1234, [5, 6, 7, 8]).
FIRST_1234 = 658132497017838498
SECOND_5678 = 7641984106258271874

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


def test_the_hash_is_the_specified_blake2b() -> None:
    # scheduler.proto's cached_prefix_hashes: BLAKE2b-64 over uint64_le(parent) then each token id
    # as uint32_le, the digest read as a little-endian uint64. Built by hand here, and pinned to
    # numbers another language's implementation can check itself against.
    import hashlib

    def by_hand(parent: int, tokens: list[int]) -> int:
        data = parent.to_bytes(8, "little") + b"".join(t.to_bytes(4, "little") for t in tokens)
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")

    first = block_hash(ROOT_PARENT_HASH, [1, 2, 3, 4])
    assert first == by_hand(0, [1, 2, 3, 4]) == FIRST_1234
    assert block_hash(first, [5, 6, 7, 8]) == by_hand(first, [5, 6, 7, 8]) == SECOND_5678
    assert prefix_block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == [FIRST_1234, SECOND_5678]
    with pytest.raises(ValueError, match="uint32"):
        block_hash(0, [2**32])
