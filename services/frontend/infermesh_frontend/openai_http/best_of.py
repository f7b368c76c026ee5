"""best_of: keep the n completions with the highest cumulative log probability (as vLLM ranks)."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh_frontend.completion_output import CompletionOutput


def best_of(outputs: Sequence[CompletionOutput], n: int) -> list[CompletionOutput]:
    """The `n` best of `outputs` by sum of token logprobs, best first (answered as choices 0..n-1)."""
    return sorted(outputs, key=lambda output: sum(output.logprobs), reverse=True)[:n]
