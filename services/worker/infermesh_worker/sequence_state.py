"""What the worker remembers about one sequence between steps (plain data: no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh_worker.step_plan import SamplingSpec


@dataclass(slots=True)
class SequenceState:
    seq_id: int
    token_ids: list[int]  # every known token: prompt, then outputs
    block_table: list[int]
    num_computed_tokens: int  # leading tokens whose KV is in the cache
    num_output_tokens: int  # generated tokens so far (seeds sampling positions)
    sampling: SamplingSpec
