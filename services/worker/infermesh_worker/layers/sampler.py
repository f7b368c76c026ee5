"""Token sampling on the device: greedy, temperature, top-k, top-p, min-p, per-request seeds.

Sampling uses the exponential-race form of the Gumbel-max trick: token = argmax(p / E) with
E ~ Exp(1) i.i.d., which draws exactly from p. A seeded request takes its noise from a generator
seeded by (seed, output position) alone, so its tokens do not depend on which other sequences share
the batch, nor on preemption/recompute. Unseeded requests share one worker-level generator.

Logprobs are log-softmax of the *processed* distribution (after temperature and top-k/top-p/min-p
masking) at the sampled token; for greedy requests (temperature 0) the processed distribution is the
raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK64 = (1 << 63) - 1


@dataclass(slots=True)
class SamplingRow:
    """What one sequence asks of the sampler this step."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int | None
    output_position: int  # index of the token being sampled among the sequence's outputs
    want_logprob: bool = False
    top_logprobs: int = 0  # most likely alternatives to return with the logprob, 0..20


def seeded_noise_seed(seed: int, output_position: int) -> int:
    """64-bit generator seed from (request seed, output position) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + output_position + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK64


class Sampler:
    def __init__(self, device: torch.device, seed: int | None = None) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def process(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """fp32 logits after temperature and top-k/top-p/min-p (-inf outside the kept support)."""
        logits = logits.float()
        vocab = logits.shape[-1]
        greedy = [r.temperature == 0 for r in rows]
        temps = torch.tensor(
            [1.0 if g else r.temperature for g, r in zip(greedy, rows, strict=True)], device=self.device
        )
        scaled = logits / temps[:, None]
        top_k = [
            vocab if g or r.top_k <= 0 else min(r.top_k, vocab) for g, r in zip(greedy, rows, strict=True)
        ]
        top_p = [1.0 if g else r.top_p for g, r in zip(greedy, rows, strict=True)]
        min_p = [0.0 if g else r.min_p for g, r in zip(greedy, rows, strict=True)]
        if all(k == vocab for k in top_k) and all(p >= 1.0 for p in top_p) and all(m <= 0 for m in min_p):
            return scaled
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=self.device)[None, :]
        keep = rank < torch.tensor(top_k, device=self.device)[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(~keep, float("-inf")), dim=-1)
        # Keep a token while the mass strictly before it is below top_p (so the top token always stays).
        mass_before = probs.cumsum(dim=-1) - probs
        keep &= mass_before < torch.tensor(top_p, device=self.device)[:, None]
        keep &= probs >= torch.tensor(min_p, device=self.device)[:, None] * probs[:, :1]
        keep_mask = torch.zeros_like(keep).scatter(1, order, keep)
        return scaled.masked_fill(~keep_mask, float("-inf"))

    def _noise(self, shape: tuple[int, int], rows: list[SamplingRow]) -> torch.Tensor:
        noise = torch.empty(shape, device=self.device).exponential_(generator=self.generator)
        for index, row in enumerate(rows):
            if row.seed is not None:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(seeded_noise_seed(row.seed, row.output_position))
                noise[index] = torch.empty(shape[1], device=self.device).exponential_(generator=gen)
        return noise

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids [N] long, logprobs [N] fp32) for logits [N, V], one SamplingRow per row."""
        tokens, logprobs, _ = self.sample_with_alternatives(logits, rows)
        return tokens, logprobs

    def sample_with_alternatives(
        self, logits: torch.Tensor, rows: list[SamplingRow]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """sample() plus, when a row asks for top_logprobs, the k most likely tokens of every row
        ([N, k] ids and logprobs, k the largest asked; a row reads its own first top_logprobs)."""
        processed = self.process(logits, rows)
        greedy = torch.tensor([r.temperature == 0 for r in rows], device=self.device)
        if bool(greedy.all()):
            tokens = processed.argmax(dim=-1)
        else:
            probs = torch.softmax(processed, dim=-1)
            sampled = (probs / self._noise(tuple(probs.shape), rows)).argmax(dim=-1)
            tokens = torch.where(greedy, processed.argmax(dim=-1), sampled)
        if not any(r.want_logprob for r in rows):
            # A full-vocabulary log-softmax per step is wasted when nobody reads the result.
            return tokens, torch.zeros(len(rows), dtype=torch.float32, device=self.device), None
        all_logprobs = torch.log_softmax(processed, dim=-1)
        logprobs = all_logprobs.gather(1, tokens[:, None]).squeeze(1)
        k = min(max(r.top_logprobs for r in rows), all_logprobs.shape[-1])
        if k <= 0:
            return tokens, logprobs, None
        top = all_logprobs.topk(k, dim=-1)
        return tokens, logprobs, (top.indices, top.values)
