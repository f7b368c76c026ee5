"""Device KV blocks: reference counts, a free list, and the prefix cache over full blocks."""

from __future__ import annotations

from collections import OrderedDict

from infermesh_scheduler.core.block_hash import ROOT_HASH, BlockKey


class BlockPool:
    """Every device block is exactly one of: held (refcount > 0), free and uncached, or
    free and cached (evictable, in LRU order). Held blocks may also be cached.

    Taking a cached block back on a prefix hit removes it from the middle of the LRU
    OrderedDict in O(1), like vLLM v1's doubly linked free queue.
    """

    def __init__(self, num_blocks: int, enable_cache: bool, cache_capacity_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.enable_cache = enable_cache and cache_capacity_blocks > 0
        self.cache_capacity_blocks = cache_capacity_blocks
        self.refcount: list[int] = [0] * num_blocks
        self.block_keys: list[BlockKey | None] = [None] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        # Popped from the end; reversed so block 0 is handed out first (readable plans).
        self._free_uncached: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks that still hold a cached prefix; oldest first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cache: dict[BlockKey, int] = {}
        self._root_hashes: dict[int, int] = {}

    # ----- counts
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (uncached free plus evictable cached)."""
        return len(self._free_uncached) + len(self._evictable)

    @property
    def num_evictable(self) -> int:
        """Blocks held only by the prefix cache."""
        return len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def root_hashes(self) -> list[int]:
        """Hashes of cached first blocks, for cache-aware routing."""
        return list(self._root_hashes)

    # ----- allocation
    def allocate(self, count: int) -> list[int]:
        """count fresh blocks with refcount 1; evicts LRU cached blocks when no uncached one is left."""
        if count > self.num_free:
            raise RuntimeError(f"asked for {count} KV blocks with only {self.num_free} free")
        out: list[int] = []
        for _ in range(count):
            if self._free_uncached:
                block = self._free_uncached.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                self._uncache(block)
            self.refcount[block] = 1
            out.append(block)
        return out

    def share(self, block: int) -> None:
        """Add a holder to a block (prefix hit or fork); revives it if it was evictable."""
        if self.refcount[block] == 0:
            del self._evictable[block]
        self.refcount[block] += 1

    def free(self, blocks: list[int]) -> None:
        """Drop one holder of each block; the tail goes first so it is evicted before the head."""
        for block in reversed(blocks):
            count = self.refcount[block] - 1
            if count < 0:
                raise RuntimeError(f"KV block {block} freed more often than held")
            self.refcount[block] = count
            if count == 0:
                if self.block_keys[block] is not None:
                    self._evictable[block] = None
                else:
                    self._free_uncached.append(block)

    # ----- prefix cache
    def lookup(self, key: BlockKey) -> int | None:
        """The cached block holding exactly this (parent, tokens) block, if any."""
        return self._cache.get(key)

    def cache_block(self, block: int, key: BlockKey, hash_value: int) -> None:
        """Remember a held, fully computed block under its key (no-op when already cached)."""
        if not self.enable_cache or self.block_keys[block] is not None or key in self._cache:
            return
        if len(self._cache) >= self.cache_capacity_blocks:
            if not self._evictable:
                return  # Capacity is taken by blocks in use: skip rather than evict live KV.
            victim, _ = self._evictable.popitem(last=False)
            self._uncache(victim)
            self._free_uncached.append(victim)
        self._cache[key] = block
        self.block_keys[block] = key
        self.block_hashes[block] = hash_value
        if key[0] == ROOT_HASH:
            self._root_hashes[hash_value] = self._root_hashes.get(hash_value, 0) + 1

    def _uncache(self, block: int) -> None:
        key = self.block_keys[block]
        if key is None:
            return
        del self._cache[key]
        if key[0] == ROOT_HASH:
            h = self.block_hashes[block]
            left = self._root_hashes[h] - 1
            if left:
                self._root_hashes[h] = left
            else:
                del self._root_hashes[h]
        self.block_keys[block] = None
        self.block_hashes[block] = None

    def reset(self) -> None:
        """Forget every holder and every cached prefix (the workers lost their KV)."""
        self.refcount = [0] * self.num_blocks
        self.block_keys = [None] * self.num_blocks
        self.block_hashes = [None] * self.num_blocks
        self._free_uncached = list(range(self.num_blocks - 1, -1, -1))
        self._evictable.clear()
        self._cache.clear()
        self._root_hashes.clear()

    # ----- checks
    def check_invariants(self, holders: dict[int, int]) -> None:
        """Assert refcounts equal holders (block -> number of sequences holding it) and the
        free structures partition the unheld blocks."""
        uncached = set(self._free_uncached)
        assert len(uncached) == len(self._free_uncached), "a block is twice in the free list"
        evictable = set(self._evictable)
        assert not (uncached & evictable), "a block is both free-uncached and evictable"
        for block in range(self.num_blocks):
            held = holders.get(block, 0)
            assert self.refcount[block] == held, (
                f"block {block}: refcount {self.refcount[block]} but {held} sequences hold it"
            )
            if held:
                assert block not in uncached and block not in evictable, f"block {block} in use and free"
            else:
                assert (block in uncached) != (block in evictable), f"block {block} neither free nor held"
            if block in evictable:
                assert self.block_keys[block] is not None, f"evictable block {block} has no key"
            if block in uncached:
                assert self.block_keys[block] is None, f"uncached free block {block} has a key"
        for key, block in self._cache.items():
            assert self.block_keys[block] == key, f"cache maps to block {block} with another key"
        assert len(self._cache) == sum(k is not None for k in self.block_keys)
        if self.enable_cache:
            assert len(self._cache) <= self.cache_capacity_blocks, "prefix cache over capacity"
        else:
            assert not self._cache
