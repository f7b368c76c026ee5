"""Content hashes of full KV blocks of token ids, shared by the scheduler's prefix cache and the
frontend's prefix-aware routing.

Both sides must compute the same number for the same tokens: the scheduler reports the hashes of
the first blocks it holds in `GetLoadResponse.cached_prefix_hashes`, and a frontend hashes a
prompt's first block to find the replica that holds it. Python's built-in `hash` is not used
because it differs between processes and builds; blake2b over little-endian uint32 token ids
with the parent's hash chained in is stable everywhere and fits a proto uint64.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

# Distinguishes "no parent" (the first block) from a parent whose hash happens to be 0.
_ROOT_MARKER = b"\x00"
_CHILD_MARKER = b"\x01"


def block_hash(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Returns the uint64 hash of one block of `token_ids` following a block hashed `parent_hash`.

    `parent_hash` is None for a sequence's first block.
    """
    digest = hashlib.blake2b(digest_size=8)
    if parent_hash is None:
        digest.update(_ROOT_MARKER)
    else:
        digest.update(_CHILD_MARKER + parent_hash.to_bytes(8, "little"))
    digest.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
    return int.from_bytes(digest.digest(), "little")


def prefix_block_hashes(
    token_ids: Sequence[int], block_size: int, max_blocks: int | None = None
) -> list[int]:
    """Returns the chained hashes of the full blocks at the start of `token_ids` (a partial last
    block is not hashed), at most `max_blocks` of them when given."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_full = len(token_ids) // block_size
    if max_blocks is not None:
        num_full = min(num_full, max_blocks)
    hashes: list[int] = []
    parent: int | None = None
    for index in range(num_full):
        parent = block_hash(parent, token_ids[index * block_size : (index + 1) * block_size])
        hashes.append(parent)
    return hashes


def first_block_hash(token_ids: Sequence[int], block_size: int) -> int | None:
    """Returns the hash of the first full block of `token_ids`, or None when the sequence is
    shorter than one block."""
    hashes = prefix_block_hashes(token_ids, block_size, max_blocks=1)
    return hashes[0] if hashes else None
