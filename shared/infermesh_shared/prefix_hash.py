"""The prefix block hash: the numbers the scheduler reports in `GetLoadResponse.
cached_prefix_hashes` (the hashes of the first blocks its prefix cache holds), that a frontend
computes for a prompt to find the replica holding it, and that the scheduler's prefix cache is
keyed by. Every host and language must compute the same numbers, so the function is specified
(scheduler.proto, `cached_prefix_hashes`), not Python's hash():

    block_hash(parent, tokens) = uint64_le(BLAKE2b-64(uint64_le(parent) || uint32_le(t0) || ... ))

BLAKE2b with an 8-byte digest and no key; the parent of a sequence's first block is 0, or, for a
request with a cache_salt, salt_root(salt) = uint64_le(BLAKE2b-64(salt as UTF-8)); token ids are
unsigned 32-bit (as in the protos). The digest's 8 bytes read as a little-endian unsigned
integer are the hash. The scheduler core uses this module; it is here so the frontend, which does
not install the scheduler, computes the same numbers.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

# The parent hash of a sequence's first block.
ROOT_PARENT_HASH = 0


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
    try:
        data = struct.pack(f"<Q{len(token_ids)}I", parent_hash, *token_ids)
    except struct.error as err:
        raise ValueError(
            f"cannot hash a block: parent hash must be a uint64 and token ids uint32 ({err})"
        ) from None
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


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
