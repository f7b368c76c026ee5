"""Hashes of full KV blocks of token ids, chained over the parent block's hash: the numbers the
scheduler reports in `GetLoadResponse.cached_prefix_hashes` (the hashes of the first blocks its
prefix cache holds) and that a frontend computes for a prompt to find the replica holding it.

The function is Python's hash of the tuple (parent hash, token ids), masked to 64 bits, with 0 as
the first block's parent — the scheduler core's own block hash (infermesh_scheduler.core.
block_hash), defined here so the frontend, which does not install the scheduler, computes the
same numbers. Hash randomisation (PYTHONHASHSEED) covers str and bytes only, so a tuple of ints
hashes alike in every process; tests/routing/test_prefix_hash.py checks both the cross-process
stability and the agreement with the scheduler core.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# The parent hash of a sequence's first block.
ROOT_PARENT_HASH = 0
_MASK = (1 << 64) - 1


def salt_root(cache_salt: str) -> int:
    """The parent hash of the first block in the prefix-cache namespace `cache_salt`
    (ROOT_PARENT_HASH for the shared one). A keyed digest, not hash(): str hashing differs
    between processes."""
    if not cache_salt:
        return ROOT_PARENT_HASH
    return int.from_bytes(hashlib.blake2b(cache_salt.encode(), digest_size=8).digest(), "little")


def block_hash(parent_hash: int, token_ids: Sequence[int]) -> int:
    """Returns the uint64 hash of one block of `token_ids` following a block hashed
    `parent_hash` (ROOT_PARENT_HASH for a sequence's first block)."""
    return hash((parent_hash, tuple(token_ids))) & _MASK


def prefix_block_hashes(
    token_ids: Sequence[int], block_size: int, max_blocks: int | None = None, cache_salt: str = ""
) -> list[int]:
    """Returns the chained hashes of the full blocks at the start of `token_ids` (a partial last
    block is not hashed), at most `max_blocks` of them when given."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_full = len(token_ids) // block_size
    if max_blocks is not None:
        num_full = min(num_full, max_blocks)
    hashes: list[int] = []
    parent = salt_root(cache_salt)
    for index in range(num_full):
        parent = block_hash(parent, token_ids[index * block_size : (index + 1) * block_size])
        hashes.append(parent)
    return hashes


def first_block_hash(token_ids: Sequence[int], block_size: int) -> int | None:
    """Returns the hash of the first full block of `token_ids`, or None when the sequence is
    shorter than one block."""
    hashes = prefix_block_hashes(token_ids, block_size, max_blocks=1)
    return hashes[0] if hashes else None
