"""A whole completion gathered from its deltas, for the APIs that answer once (unary gRPC, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass, field

from infermesh.v1 import common_pb2

from infermesh_frontend.completion_output import CompletionDelta


@dataclass(slots=True)
class CollectedCompletion:
    """One completion's output so far. Text is kept as parts and joined once: appending to one
    string per delta would copy the whole output every token."""

    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[list[int], list[float]]] = field(default_factory=list)
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    matched_stop: str = ""

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def add(self, delta: CompletionDelta) -> None:
        self.text_parts.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.top_logprobs.extend(delta.top_logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
            self.matched_stop = delta.matched_stop
