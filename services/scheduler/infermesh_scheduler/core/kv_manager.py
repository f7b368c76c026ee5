"""The one door to KV blocks: device and CPU pools, prefix matching, copy-on-write, swap moves,
and the block arithmetic every admission and growth decision rests on.

The scheduler decides *who* gets blocks (order, budgets, preemption victims); this class decides
*which* blocks and keeps the books: a sequence's block_ids / cpu_block_ids are written only here.
Every method that moves KV returns the BlockMoves the worker must apply; it never builds plans.
"""

from __future__ import annotations

from infermesh_scheduler.core.block_pool import BlockPool
from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.cpu_block_pool import CpuBlockPool
from infermesh_scheduler.core.sequence import RequestState, Sequence
from infermesh_scheduler.core.step_plan import BlockMove


def request_worst_blocks(prompt_len: int, max_tokens: int, n: int, block_size: int) -> int:
    """Most device blocks a whole request of n completions can hold at once."""
    worst = -(-(prompt_len + max_tokens) // block_size)
    # Children share the blocks before the one holding the last prompt token.
    return worst + (n - 1) * (worst - (prompt_len - 1) // block_size)


class KVManager:
    def __init__(self, config: SchedulerCoreConfig) -> None:
        self.block_size = bs = config.block_size
        self._max_model_len = config.max_model_len
        cache_blocks = config.prefix_cache_capacity // bs if config.enable_prefix_cache else 0
        # Read by tests and metrics; everything that changes them goes through this class.
        self.gpu_pool = BlockPool(config.num_blocks, config.enable_prefix_cache, cache_blocks)
        self.cpu_pool = CpuBlockPool(config.num_cpu_blocks if config.enable_swap else 0)
        self.num_blocks = config.num_blocks
        # Blocks handed out by reserve() and not yet adopted by a sequence or released.
        self._reserved: set[int] = set()

    # ------------------------------------------------------------------ counts
    @property
    def num_free(self) -> int:
        """Device blocks that can be handed out now (cached-but-unused ones included)."""
        return self.gpu_pool.num_free

    @property
    def num_evictable(self) -> int:
        """Device blocks held only by the prefix cache."""
        return self.gpu_pool.num_evictable

    @property
    def num_free_cpu(self) -> int:
        return self.cpu_pool.num_free

    @property
    def prefix_cache_enabled(self) -> bool:
        return self.gpu_pool.enable_cache

    def root_hashes(self) -> list[int]:
        """Hashes of cached first blocks, for cache-aware routing."""
        return self.gpu_pool.root_hashes()

    def refcount(self, block: int) -> int:
        """Holders of one device block (sequences, not the cache)."""
        return self.gpu_pool.refcount[block]

    # ------------------------------------------------------------------ block arithmetic
    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that hold num_tokens tokens."""
        return -(-num_tokens // self.block_size)

    def worst_blocks(self, seq: Sequence) -> int:
        """Most blocks seq itself can ever hold."""
        s = seq.request.spec
        return self.blocks_for(min(len(s.prompt_token_ids) + s.sampling.max_tokens, self._max_model_len))

    def children_worst_blocks(self, req: RequestState) -> int:
        """Blocks completions 1..n-1 will take of their own once forked (each copies one block)."""
        s = req.spec
        prompt_len = len(s.prompt_token_ids)
        child = self.blocks_for(prompt_len + s.sampling.max_tokens) - self.blocks_for(prompt_len) + 1
        return (s.sampling.n - 1) * child

    def future_blocks(self, seq: Sequence) -> int:
        """Blocks seq may still take before it finishes (its children's too, before the fork)."""
        future = max(0, self.worst_blocks(seq) - len(seq.block_ids))
        if seq.cow_block_index >= 0:
            future += 1
        req = seq.request
        if req.spec.sampling.n > 1 and not req.forked and seq.index == 0:
            future += self.children_worst_blocks(req)
        return future

    def blocks_after_admission(self, seq: Sequence, first_tokens: int) -> int:
        """Blocks a waiting seq (and its n > 1 siblings) may still take after it is admitted with
        blocks for its first `first_tokens` tokens."""
        later = self.worst_blocks(seq) - self.blocks_for(first_tokens)
        if seq.request.spec.sampling.n > 1 and not seq.request.forked:
            later += self.children_worst_blocks(seq.request)
        return later

    def growth(self, seq: Sequence, n: int) -> int:
        """New device blocks a running seq takes to compute n more tokens (its CoW copy included)."""
        need = -(-(seq.num_computed_tokens + n) // self.block_size) - len(seq.block_ids)
        if seq.cow_block_index >= 0:
            need += 1
        return need

    def admission_cost(self, hits: list[int], computed: int, n: int) -> tuple[int, int]:
        """(fresh blocks, cached blocks revived) a waiting sequence with these prefix hits takes to
        compute n tokens after its `computed` cached ones; both come out of the free count."""
        refcount = self.gpu_pool.refcount
        fresh = -(-(computed + n) // self.block_size) - len(hits)
        return fresh, sum(1 for b in hits if refcount[b] == 0)

    # ------------------------------------------------------------------ prefix cache
    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's leading full blocks; never the block of its last token,
        which must be computed so the worker can sample after it."""
        if not self.gpu_pool.enable_cache:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        if max_blocks <= 0:
            return []
        keys = seq.full_block_keys(self.block_size, max_blocks)
        hits: list[int] = []
        lookup = self.gpu_pool.lookup
        for i in range(max_blocks):
            block = lookup(keys[i])
            if block is None:
                break
            hits.append(block)
        return hits

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Offer seq's newly completed full blocks to the prefix cache."""
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_cached_blocks:
            return
        keys = seq.full_block_keys(self.block_size, full)
        hashes = seq.block_hashes
        blocks = seq.block_ids
        for i in range(seq.num_cached_blocks, full):
            if i != seq.cow_block_index:
                self.gpu_pool.cache_block(blocks[i], keys[i], hashes[i])
        seq.num_cached_blocks = full

    # ------------------------------------------------------------------ device blocks
    def allocate(self, seq: Sequence, hits: list[int], n: int) -> None:
        """Give a waiting seq its prefix hits plus fresh blocks for n tokens after them."""
        gpu = self.gpu_pool
        for b in hits:
            gpu.share(b)
        computed = len(hits) * self.block_size
        fresh = self.blocks_for(computed + n) - len(hits)
        seq.block_ids = hits + gpu.allocate(fresh)
        seq.num_computed_tokens = computed
        seq.num_cached_blocks = len(hits)

    def grow(self, seq: Sequence, need: int) -> list[BlockMove]:
        """Give a running seq the `need` blocks growth() counted; returns the CoW copy, if any."""
        copies: list[BlockMove] = []
        if seq.cow_block_index >= 0:
            copies = self._copy_on_write(seq)
            need -= 1
        if need > 0:
            fresh = self.gpu_pool.allocate(need)
            seq.block_ids.extend(fresh)
            if seq.sent:
                seq.new_block_ids.extend(fresh)
        return copies

    def _copy_on_write(self, seq: Sequence) -> list[BlockMove]:
        """Give a forked child its own copy of the shared block it is about to write into."""
        gpu = self.gpu_pool
        index = seq.cow_block_index
        shared = seq.block_ids[index]
        seq.cow_block_index = -1
        if gpu.refcount[shared] == 1 and gpu.block_keys[shared] is None:
            return []  # sole holder of an uncached block: write in place, keep the block reserved for it
        (own,) = gpu.allocate(1)
        seq.block_ids[index] = own
        gpu.free([shared])
        return [BlockMove(shared, own)]

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let a new completion share the parent's prompt blocks; it copies the last one lazily."""
        cow_index = (parent.num_prompt_tokens - 1) // self.block_size
        shared = parent.block_ids[: cow_index + 1]
        for b in shared:
            self.gpu_pool.share(b)
        child.block_ids = list(shared)
        child.num_computed_tokens = parent.num_prompt_tokens - 1
        child.cow_block_index = cow_index
        child.num_cached_blocks = cow_index

    def free(self, seq: Sequence) -> None:
        """Give back every device and CPU block seq holds."""
        if seq.block_ids:
            self.gpu_pool.free(seq.block_ids)
        if seq.cpu_block_ids:
            self.cpu_pool.free(seq.cpu_block_ids)
        seq.block_ids = []
        seq.cpu_block_ids = []
        seq.new_block_ids = []

    # ------------------------------------------------------------------ swap
    def can_swap_out(self, seq: Sequence) -> bool:
        """Whether seq's KV can move to CPU blocks (the worker holds it and it owns all its blocks)."""
        return (
            self.cpu_pool.num_blocks > 0
            and seq.sent
            and seq.cow_block_index < 0
            and self.cpu_pool.num_free >= len(seq.block_ids)
        )

    def swap_out(self, seq: Sequence) -> list[BlockMove]:
        """Move seq's KV to CPU blocks (device -> CPU moves) and free its device blocks."""
        cpu_blocks = self.cpu_pool.allocate(len(seq.block_ids))
        moves = [BlockMove(d, c) for d, c in zip(seq.block_ids, cpu_blocks, strict=True)]
        self.gpu_pool.free(seq.block_ids)
        seq.block_ids = []
        seq.new_block_ids = []
        seq.cpu_block_ids = cpu_blocks
        return moves

    def swap_in_blocks(self, seq: Sequence, n: int) -> int:
        """Device blocks a swapped seq takes to come back and compute n tokens."""
        return max(len(seq.cpu_block_ids), self.blocks_for(seq.num_computed_tokens + n))

    def swap_in(self, seq: Sequence, n: int) -> list[BlockMove]:
        """Bring seq's KV back to fresh device blocks (CPU -> device moves), room for n tokens."""
        device = self.gpu_pool.allocate(self.swap_in_blocks(seq, n))
        cpu = seq.cpu_block_ids
        moves = [BlockMove(c, d) for c, d in zip(cpu, device[: len(cpu)], strict=True)]
        self.cpu_pool.free(cpu)
        seq.cpu_block_ids = []
        seq.block_ids = device
        return moves

    # ------------------------------------------------------------------ moving a sequence between replicas
    def reserve(self, num_tokens: int) -> list[int]:
        """Fresh device blocks for num_tokens tokens of a sequence that is still elsewhere (its KV
        is copied into them before it is admitted here with adopt()); owned by no sequence yet."""
        blocks = self.gpu_pool.allocate(self.blocks_for(num_tokens))
        self._reserved.update(blocks)
        return blocks

    def release_reserved(self, blocks: list[int]) -> None:
        """Give back blocks reserve() handed out that no sequence adopted (a transfer failed)."""
        self._take_reserved(blocks)
        self.gpu_pool.free(blocks)

    def adopt(self, seq: Sequence, blocks: list[int], num_computed_tokens: int) -> None:
        """Make reserved blocks, already holding num_computed_tokens tokens of KV, a sequence's own."""
        if len(blocks) * self.block_size < num_computed_tokens:
            raise ValueError(f"{len(blocks)} blocks cannot hold {num_computed_tokens} computed tokens")
        self._take_reserved(blocks)
        seq.block_ids = list(blocks)
        seq.num_computed_tokens = num_computed_tokens
        seq.num_cached_blocks = 0
        seq.cow_block_index = -1
        self.cache_full_blocks(seq)

    def export_block_ids(self, seq: Sequence) -> list[int]:
        """The device blocks holding seq's computed tokens, in order (what a transfer copies)."""
        return list(seq.block_ids[: self.blocks_for(seq.num_computed_tokens)])

    def _take_reserved(self, blocks: list[int]) -> None:
        unknown = [b for b in blocks if b not in self._reserved]
        if unknown:
            raise ValueError(f"blocks {unknown} were not reserved")
        self._reserved.difference_update(blocks)

    # ------------------------------------------------------------------ recovery, checks
    def reset(self) -> None:
        """Forget every holder and cached prefix (the workers lost their KV)."""
        self.gpu_pool.reset()
        self.cpu_pool.reset()
        self._reserved.clear()

    def check_invariants(self, running: list[Sequence], swapped: list[Sequence]) -> None:
        """Assert the pools' books match the blocks the running and swapped sequences hold."""
        holders: dict[int, int] = {}
        for seq in running:
            assert len(seq.block_ids) * self.block_size >= seq.num_computed_tokens, (
                f"seq {seq.seq_id} blocks too few"
            )
            assert len(set(seq.block_ids)) == len(seq.block_ids), f"seq {seq.seq_id} holds a block twice"
            for b in seq.block_ids:
                holders[b] = holders.get(b, 0) + 1
        for b in self._reserved:
            holders[b] = holders.get(b, 0) + 1
        cpu_held = [b for seq in swapped for b in seq.cpu_block_ids]
        self.gpu_pool.check_invariants(holders)
        self.cpu_pool.check_invariants(cpu_held)
