"""Hashes of full KV blocks, chained over the parent block's hash.

A block's identity is (parent hash, its token ids): the same tokens after a different prefix
are a different block. The 64-bit int is what routing sees (cached_prefix_hashes); the cache
itself keys on the full (parent hash, tokens) tuple so a hash collision can never share KV.
Python's hash of a tuple of ints is the same in every process, so a frontend can compute it.
"""

from __future__ import annotations

# The salted root (a request's prefix-cache namespace) is defined with the frontend's copy of the
# hash so that both compute the same numbers.
from infermesh_shared.prefix_hash import salt_root

__all__ = ["ROOT_HASH", "BlockKey", "block_hash", "block_key", "hash_prompt_blocks", "salt_root"]

ROOT_HASH = 0
_MASK = (1 << 64) - 1

BlockKey = tuple[int, tuple[int, ...]]


def block_key(parent_hash: int, token_ids: tuple[int, ...]) -> BlockKey:
    """The prefix-cache key of one full block."""
    return (parent_hash, token_ids)


def block_hash(key: BlockKey) -> int:
    """Unsigned 64-bit hash of a block key."""
    return hash(key) & _MASK


def hash_prompt_blocks(token_ids: list[int], block_size: int) -> list[int]:
    """Chained hashes of every full block of token_ids (what cached_prefix_hashes holds)."""
    hashes: list[int] = []
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(block_key(parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes
