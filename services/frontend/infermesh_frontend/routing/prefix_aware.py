"""prefix_aware: send a prompt to the replica most likely to hold its prefix in its KV cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from infermesh_shared.prefix_hash import prefix_block_hashes

from infermesh_frontend.routing.least_load import least_loaded
from infermesh_frontend.routing.replica_load import ReplicaLoad
from infermesh_frontend.routing.route_request import RouteRequest

# Blocks of a prompt remembered per assignment: enough to tell apart prompts that share a system
# prompt but not what follows, cheap enough to hash on every request.
DEFAULT_MAX_PREFIX_BLOCKS = 8
DEFAULT_MEMORY_CAPACITY = 16384
# A holder of the prefix with this many more requests than the least-loaded replica is overloaded.
DEFAULT_MAX_IMBALANCE = 8
DEFAULT_MIN_FREE_BLOCK_RATIO = 0.05


class PrefixAwarePolicy:
    """Picks, in order: the replica this frontend last sent the longest matching prefix to; a
    replica whose GetLoad reports the prompt's first block cached; else the least-loaded one.
    A prefix holder that is overloaded loses to the least-loaded replica.
    """

    name = "prefix_aware"

    def __init__(
        self,
        block_size: int = 0,
        *,
        max_prefix_blocks: int = DEFAULT_MAX_PREFIX_BLOCKS,
        memory_capacity: int = DEFAULT_MEMORY_CAPACITY,
        max_imbalance: int = DEFAULT_MAX_IMBALANCE,
        min_free_block_ratio: float = DEFAULT_MIN_FREE_BLOCK_RATIO,
    ) -> None:
        if max_prefix_blocks < 1 or memory_capacity < 1 or max_imbalance < 0:
            raise ValueError("max_prefix_blocks and memory_capacity must be >= 1, max_imbalance >= 0")
        # Tokens per KV block of the replicas; 0 until the pool learns it from GetModelInfo, and
        # while it is 0 the policy routes by load only.
        self.block_size = block_size
        self._max_prefix_blocks = max_prefix_blocks
        self._memory_capacity = memory_capacity
        self._max_imbalance = max_imbalance
        self._min_free_block_ratio = min_free_block_ratio
        # Chained block hash -> address, least recently used first.
        self._memory: OrderedDict[int, str] = OrderedDict()

    def pick(self, request: RouteRequest, candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
        least = least_loaded(candidates)
        if least is None or self.block_size <= 0:
            return least
        hashes = prefix_block_hashes(
            request.prompt_token_ids, self.block_size, self._max_prefix_blocks, request.cache_salt
        )
        if not hashes:
            return least
        chosen = self._remembered_holder(hashes, candidates)
        if chosen is None:
            chosen = least_loaded(
                [replica for replica in candidates if hashes[0] in replica.cached_prefix_hashes]
            )
        if chosen is None or self._overloaded(chosen, least):
            chosen = least
        self._remember(hashes, chosen.address)
        return chosen

    def _remembered_holder(self, hashes: list[int], candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
        by_address = {replica.address: replica for replica in candidates}
        for prefix_hash in reversed(hashes):
            address = self._memory.get(prefix_hash)
            if address is not None and address in by_address:
                return by_address[address]
        return None

    def _overloaded(self, holder: ReplicaLoad, least: ReplicaLoad) -> bool:
        if holder.num_requests - least.num_requests > self._max_imbalance:
            return True
        return holder.free_block_ratio < self._min_free_block_ratio <= least.free_block_ratio

    def _remember(self, hashes: list[int], address: str) -> None:
        for prefix_hash in hashes:
            self._memory[prefix_hash] = address
            self._memory.move_to_end(prefix_hash)
        while len(self._memory) > self._memory_capacity:
            self._memory.popitem(last=False)
