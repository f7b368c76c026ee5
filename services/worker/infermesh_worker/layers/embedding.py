"""Vocabulary-parallel token embedding and LM head: each tensor rank holds a contiguous vocab range."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infermesh_worker.checkpoint_reader import CheckpointReader
from infermesh_worker.parallel import ParallelContext


def vocab_range(vocab_size: int, parallel: ParallelContext) -> tuple[int, int]:
    """[start, end) of the padded vocabulary this tensor rank holds (vocab padded to tp_size multiple)."""
    per_rank = -(-vocab_size // parallel.tp_size)
    start = parallel.tp_rank * per_rank
    return start, start + per_rank


class VocabParallelEmbedding(nn.Module):
    """Looks up the ids this rank owns, zeros the others, and all-reduces over the tensor group."""

    def __init__(self, vocab_size: int, hidden_size: int, parallel: ParallelContext, dtype, device) -> None:
        super().__init__()
        self.parallel = parallel
        self.vocab_size = vocab_size
        self.start, self.end = vocab_range(vocab_size, parallel)
        self.weight = nn.Parameter(
            torch.empty((self.end - self.start, hidden_size), dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.start) & (input_ids < self.end)
        local_ids = torch.where(owned, input_ids - self.start, torch.zeros_like(input_ids))
        out = F.embedding(local_ids, self.weight)
        out = out * owned.unsqueeze(-1).to(out.dtype)
        return self.parallel.tp_all_reduce(out)

    def load(self, reader: CheckpointReader, name: str) -> None:
        full = (self.vocab_size, self.weight.shape[1])
        self.weight.data.copy_(reader.read(name, full, 0, self.start, self.end))


class ParallelLMHead(nn.Module):
    """Logits over this rank's vocab range, gathered across the tensor group and trimmed to vocab_size."""

    def __init__(self, vocab_size: int, hidden_size: int, parallel: ParallelContext, dtype, device) -> None:
        super().__init__()
        self.parallel = parallel
        self.vocab_size = vocab_size
        self.start, self.end = vocab_range(vocab_size, parallel)
        self.weight = nn.Parameter(
            torch.empty((self.end - self.start, hidden_size), dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)
        logits = self.parallel.tp_all_gather_last_dim(logits)
        return logits[..., : self.vocab_size]

    def load(self, reader: CheckpointReader, name: str) -> None:
        full = (self.vocab_size, self.weight.shape[1])
        self.weight.data.copy_(reader.read(name, full, 0, self.start, self.end))
