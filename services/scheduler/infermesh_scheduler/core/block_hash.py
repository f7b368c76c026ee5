"""Keys and hashes of full KV blocks, chained over the parent block's hash.

A block's identity is (parent hash, its token ids): the same tokens after a different prefix
are a different block. The hash is the specified one of infermesh_shared.prefix_hash (BLAKE2b,
what routing sees in cached_prefix_hashes); the cache itself keys on the full (parent hash,
tokens) tuple so a hash collision can never share KV.
"""

from __future__ import annotations

from infermesh_shared.prefix_hash import ROOT_PARENT_HASH, prefix_block_hashes, salt_root
from infermesh_shared.prefix_hash import block_hash as _spec_block_hash

__all__ = ["ROOT_HASH", "BlockKey", "block_hash", "block_key", "hash_prompt_blocks", "salt_root"]

ROOT_HASH = ROOT_PARENT_HASH

BlockKey = tuple[int, tuple[int, ...]]


def block_key(parent_hash: int, token_ids: tuple[int, ...]) -> BlockKey:
    """The prefix-cache key of one full block."""
    return (parent_hash, token_ids)


def block_hash(key: BlockKey) -> int:
    """The specified uint64 hash of a block key."""
    return _spec_block_hash(key[0], key[1])


def hash_prompt_blocks(token_ids: list[int], block_size: int) -> list[int]:
    """Chained hashes of every full block of token_ids (what cached_prefix_hashes holds)."""
    return prefix_block_hashes(token_ids, block_size)
