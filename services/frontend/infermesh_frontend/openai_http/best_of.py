"""best_of: keep the n completions with the highest cumulative log probability (as vLLM ranks)."""

from __future__ import annotations

from infermesh_frontend.completion_collector import CollectedCompletion


def best_of(choices: dict[int, CollectedCompletion], n: int) -> dict[int, CollectedCompletion]:
    """The `n` best of `choices` by sum of token logprobs, re-indexed 0..n-1 best first."""
    ranked = sorted(choices.values(), key=lambda choice: sum(choice.logprobs), reverse=True)
    return dict(enumerate(ranked[:n]))
