"""The paged KV cache of this rank's layers, plus the CPU copy used for swapping.

Layout: one tensor [layers_local, 2 (K, V), num_blocks, block_size, kv_heads_local, head_dim], so a
swap or copy of a set of blocks is one indexing op for all layers at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def kv_block_bytes(
    block_size: int, num_layers: int, num_kv_heads: int, head_dim: int, dtype_size: int
) -> int:
    """Bytes one KV block takes on this rank: K and V for every local layer and KV head.

    Same arithmetic as infermesh_shared.config.kv_sizing.kv_block_bytes (which the scheduler uses),
    but over this rank's actual layer count: stages may differ by one layer.
    """
    return block_size * 2 * num_layers * num_kv_heads * head_dim * dtype_size


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        num_cpu_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.num_cpu_blocks = num_cpu_blocks
        self.block_size = block_size
        shape = (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
        self.device_cache = torch.zeros(shape, dtype=dtype, device=device)
        cpu_shape = (num_layers, 2, num_cpu_blocks, block_size, num_kv_heads, head_dim)
        pin = device.type == "cuda"
        self.cpu_cache = torch.zeros(cpu_shape, dtype=dtype, device="cpu", pin_memory=pin)

    def layer(self, index: int) -> torch.Tensor:
        """[2, num_blocks, block_size, kv_heads, head_dim] view of local layer `index`."""
        return self.device_cache[index]

    def swap_out(self, moves: Sequence[tuple[int, int]]) -> None:
        """Device blocks -> CPU blocks (moves checked by plan_state.check_moves)."""
        if moves:
            src, dst = self._indices(moves, self.device_cache.device)
            self.cpu_cache[:, :, dst.cpu()] = self.device_cache[:, :, src].to("cpu")

    def swap_in(self, moves: Sequence[tuple[int, int]]) -> None:
        """CPU blocks -> device blocks."""
        if moves:
            src, dst = self._indices(moves, self.device_cache.device)
            self.device_cache[:, :, dst] = self.cpu_cache[:, :, src.cpu()].to(self.device_cache.device)

    def copy(self, moves: Sequence[tuple[int, int]]) -> None:
        """Device blocks -> device blocks (copy-on-write)."""
        if moves:
            src, dst = self._indices(moves, self.device_cache.device)
            self.device_cache[:, :, dst] = self.device_cache[:, :, src]

    @staticmethod
    def _indices(moves: Sequence[tuple[int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        src = torch.tensor([m[0] for m in moves], dtype=torch.long, device=device)
        dst = torch.tensor([m[1] for m in moves], dtype=torch.long, device=device)
        return src, dst
