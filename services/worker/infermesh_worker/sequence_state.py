"""What the worker remembers about one sequence between steps."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh_worker.layers.sampler import SamplingRow


@dataclass(slots=True)
class SequenceState:
    seq_id: int
    token_ids: list[int]  # every known token: prompt, then outputs
    block_table: list[int]
    num_computed_tokens: int  # leading tokens whose KV is in the cache
    num_output_tokens: int  # generated tokens so far (seeds sampling positions)
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int | None
    want_logprobs: bool

    def sampling_row(self) -> SamplingRow:
        return SamplingRow(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            seed=self.seed,
            output_position=self.num_output_tokens,
            want_logprob=self.want_logprobs,
        )
