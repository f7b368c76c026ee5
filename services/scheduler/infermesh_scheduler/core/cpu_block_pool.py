"""CPU blocks that swapped-out sequences' KV is copied into."""

from __future__ import annotations


class CpuBlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} CPU blocks with only {len(self._free)} free")
        return [self._free.pop() for _ in range(count)]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(blocks)

    def reset(self) -> None:
        self._free = list(range(self.num_blocks - 1, -1, -1))

    def check_invariants(self, held: list[int]) -> None:
        free = set(self._free)
        assert len(free) == len(self._free), "a CPU block is twice in the free list"
        assert len(set(held)) == len(held), "a CPU block is held twice"
        assert not (free & set(held)), "a CPU block is both free and held"
        assert len(free) + len(held) == self.num_blocks, "CPU blocks leaked"
