"""Tensor-parallel linear layers (Megatron style): column-parallel splits outputs, row-parallel
splits inputs and all-reduces the partial sums."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infermesh_worker.checkpoint_reader import CheckpointReader
from infermesh_worker.parallel import ParallelContext


def _param(shape: tuple[int, ...], dtype: torch.dtype, device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class MergedColumnParallelLinear(nn.Module):
    """Several column-parallel projections of the same input fused into one matmul.

    `parts` lists (checkpoint suffix, rows this rank holds, first row of this rank's slice, rows of
    the whole checkpoint tensor); the local output is those slices concatenated in order.
    """

    def __init__(
        self,
        in_features: int,
        parts: list[tuple[str, int, int, int]],
        bias: bool,
        dtype: torch.dtype,
        device,
    ) -> None:
        super().__init__()
        self.parts = parts
        self.in_features = in_features
        self.out_features = sum(part[1] for part in parts)
        self.weight = _param((self.out_features, in_features), dtype, device)
        self.bias = _param((self.out_features,), dtype, device) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def load(self, reader: CheckpointReader, prefix: str) -> None:
        offset = 0
        for suffix, rows, start, full_rows in self.parts:
            name = f"{prefix}.{suffix}"
            self.weight.data[offset : offset + rows].copy_(
                reader.read(f"{name}.weight", (full_rows, self.in_features), 0, start, start + rows)
            )
            if self.bias is not None:
                self.bias.data[offset : offset + rows].copy_(
                    reader.read(f"{name}.bias", (full_rows,), 0, start, start + rows)
                )
            offset += rows


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local @ W_local^T) + b; the bias is added once, after the reduction."""

    def __init__(
        self,
        in_features_local: int,
        in_features: int,
        out_features: int,
        input_start: int,
        bias: bool,
        parallel: ParallelContext,
        dtype: torch.dtype,
        device,
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.input_start = input_start
        self.in_features = in_features
        self.out_features = out_features
        self.weight = _param((out_features, in_features_local), dtype, device)
        self.bias = _param((out_features,), dtype, device) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parallel.tp_all_reduce(F.linear(x, self.weight))
        if self.bias is not None:
            y = y + self.bias
        return y

    def load(self, reader: CheckpointReader, name: str) -> None:
        cols = self.weight.shape[1]
        full = (self.out_features, self.in_features)
        self.weight.data.copy_(
            reader.read(f"{name}.weight", full, 1, self.input_start, self.input_start + cols)
        )
        if self.bias is not None:
            self.bias.data.copy_(reader.read(f"{name}.bias", (self.out_features,)))
