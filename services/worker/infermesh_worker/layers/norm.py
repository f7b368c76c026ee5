"""RMSNorm computed exactly as transformers does (fp32 statistics, weight applied in the input dtype)."""

from __future__ import annotations

import torch
from torch import nn

from infermesh_worker.checkpoint_reader import CheckpointReader


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype, device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        x32 = x32 * torch.rsqrt(variance + self.eps)
        return self.weight * x32.to(input_dtype)

    def load(self, reader: CheckpointReader, name: str) -> None:
        self.weight.data.copy_(reader.read(name, tuple(self.weight.shape)))
