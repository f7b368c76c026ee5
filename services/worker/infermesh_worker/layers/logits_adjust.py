"""Logit adjustments applied before temperature and top-k/top-p: presence, frequency and
repetition penalties, logit_bias and min_tokens, for the whole batch at once on the device.

As vLLM: presence/frequency penalties count the *generated* tokens (OpenAI's definition);
repetition_penalty (the CTRL/transformers rule) looks at prompt and generated tokens alike;
min_tokens keeps EOS (unless ignore_eos) and the stop token ids from being sampled until that
many tokens were generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(slots=True, frozen=True)
class LogitsAdjustment:
    """What one sequence asks beyond plain sampling; None on a sequence that asks nothing."""

    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    # Token ids kept out while fewer than min_tokens were generated.
    end_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_params(cls, sampling, eos_token_ids: Sequence[int]) -> LogitsAdjustment | None:
        """From a SamplingSpec (or proto SamplingParams); None when it asks for nothing here."""
        repetition = sampling.repetition_penalty or 1.0  # 0: sent by a frontend that predates the field
        if not (
            sampling.presence_penalty
            or sampling.frequency_penalty
            or repetition != 1.0
            or sampling.logit_bias
            or sampling.min_tokens
        ):
            return None
        ends = [*(() if sampling.ignore_eos else eos_token_ids), *sampling.stop_token_ids]
        return cls(
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            repetition_penalty=repetition,
            logit_bias=tuple(sorted(dict(sampling.logit_bias).items())),
            min_tokens=sampling.min_tokens,
            end_token_ids=tuple(dict.fromkeys(ends)) if sampling.min_tokens else (),
        )


@dataclass(slots=True)
class AdjustRow:
    """One row of the batch: its adjustment, every known token, and how many are outputs."""

    adjustment: LogitsAdjustment | None
    token_ids: list[int]
    num_output_tokens: int


def _counts(rows: list[AdjustRow], vocab: int, outputs_only: bool, device: torch.device) -> torch.Tensor:
    """[R, V] how often each token id occurs in each row's outputs (or all its tokens)."""
    histories = [
        r.token_ids[len(r.token_ids) - r.num_output_tokens :] if outputs_only else r.token_ids for r in rows
    ]
    width = max((len(h) for h in histories), default=0)
    counts = torch.zeros(len(rows), vocab + 1, device=device)
    if width:
        # Padding goes to the extra column `vocab`, dropped below.
        ids = torch.full((len(rows), width), vocab, dtype=torch.long)
        for index, history in enumerate(histories):
            ids[index, : len(history)] = torch.tensor(history, dtype=torch.long)
        counts.scatter_add_(1, ids.to(device), torch.ones(ids.shape, device=device))
    return counts[:, :vocab]


def adjust_logits(logits: torch.Tensor, rows: list[AdjustRow]) -> torch.Tensor:
    """fp32 logits [N, V] with each row's adjustment applied; `logits` itself when none asks."""
    asking = [i for i, r in enumerate(rows) if r.adjustment is not None]
    if not asking:
        return logits
    logits = logits.float().clone()
    device, vocab = logits.device, logits.shape[-1]
    picked = [rows[i] for i in asking]
    index = torch.tensor(asking, dtype=torch.long, device=device)
    sub = logits[index]
    adjustments = [r.adjustment for r in picked]

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

    repetition = [a.repetition_penalty for a in adjustments]
    if any(p != 1.0 for p in repetition):
        seen = _counts(picked, vocab, outputs_only=False, device=device) > 0
        penalty = column(repetition)
        penalised = torch.where(sub > 0, sub / penalty, sub * penalty)
        sub = torch.where(seen, penalised, sub)
    presence, frequency = (
        [a.presence_penalty for a in adjustments],
        [a.frequency_penalty for a in adjustments],
    )
    if any(presence) or any(frequency):
        counts = _counts(picked, vocab, outputs_only=True, device=device)
        sub = sub - column(frequency) * counts - column(presence) * (counts > 0).float()
    for row, adjustment in enumerate(adjustments):
        if adjustment.logit_bias:
            ids = torch.tensor([t for t, _ in adjustment.logit_bias], dtype=torch.long, device=device)
            sub[row, ids] += torch.tensor([b for _, b in adjustment.logit_bias], device=device)
        if adjustment.end_token_ids and picked[row].num_output_tokens < adjustment.min_tokens:
            ends = [t for t in adjustment.end_token_ids if t < vocab]
            sub[row, torch.tensor(ends, dtype=torch.long, device=device)] = float("-inf")
    logits[index] = sub
    return logits
