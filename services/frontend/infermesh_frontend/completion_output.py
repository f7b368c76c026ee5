"""One completion's output as it streams in: token ids -> text deltas, cut at stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from infermesh.v1 import common_pb2

from infermesh_frontend.detokenizer import Detokenizer
from infermesh_frontend.stop_strings import StopStringMatcher


@dataclass(slots=True)
class CompletionDelta:
    """What one completion gained since its previous delta."""

    index: int
    text: str = ""
    request_id: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # Per token: the most likely alternatives (ids, logprobs), when top_logprobs were asked.
    top_logprobs: list[tuple[list[int], list[float]]] = field(default_factory=list)
    # FINISH_REASON_UNSPECIFIED until the completion's last delta.
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    matched_stop: str = ""
    # Set on the request's last delta.
    usage: common_pb2.Usage | None = None


class CompletionOutput:
    """Accumulates one completion (index 0..n-1) and turns scheduler tokens into deltas; once it
    finished it is the completion's whole answer, read by every API that answers once (unary
    gRPC, HTTP). Text is kept as parts and joined once: appending to one string per delta would
    copy the whole output every token."""

    def __init__(
        self,
        index: int,
        new_detokenizer: Callable[[Sequence[int]], Detokenizer],
        prompt_token_ids: Sequence[int],
        stop_strings: Sequence[str],
        include_stop_str: bool = False,
    ) -> None:
        self.index = index
        self._detokenizer = new_detokenizer(prompt_token_ids)
        self._stops = StopStringMatcher(stop_strings)
        self.text_parts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[tuple[list[int], list[float]]] = []
        self.finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
        self.matched_stop = ""
        self._include_stop_str = include_stop_str

    @property
    def finished(self) -> bool:
        """True once the completion ended (scheduler finish or a stop string)."""
        return self.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self.text_parts)

    def add(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float],
        finish_reason: int,
        top_logprobs: Sequence[tuple[list[int], list[float]]] = (),
    ) -> CompletionDelta | None:
        """Takes one scheduler message for this completion; returns the delta, or None once finished.

        Tokens are fed one at a time so that a stop string ends the completion at the token that
        completed it; tokens after that one are dropped.
        """
        if self.finished:
            return None
        delta = CompletionDelta(index=self.index)
        for position, token_id in enumerate(token_ids):
            delta.token_ids.append(token_id)
            if position < len(logprobs):
                delta.logprobs.append(logprobs[position])
            if position < len(top_logprobs):
                delta.top_logprobs.append(top_logprobs[position])
            check = self._stops.feed(self._detokenizer.add_tokens([token_id]))
            delta.text += check.text
            if check.matched_stop is not None:
                self._end(delta, common_pb2.FINISH_REASON_STOP, check.matched_stop)
                return delta
        if finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
            check = self._stops.feed(self._detokenizer.finish())
            delta.text += check.text
            if check.matched_stop is not None:
                self._end(delta, common_pb2.FINISH_REASON_STOP, check.matched_stop)
            else:
                delta.text += self._stops.flush()
                self._end(delta, finish_reason, "")
            return delta
        self._record(delta)
        return delta

    def end_without_scheduler(self, finish_reason: int) -> CompletionDelta:
        """Ends the completion when the scheduler stream stopped without finishing it."""
        delta = CompletionDelta(index=self.index)
        delta.text = self._stops.feed(self._detokenizer.finish()).text + self._stops.flush()
        self._end(delta, finish_reason, "")
        return delta

    def _end(self, delta: CompletionDelta, finish_reason: int, matched_stop: str) -> None:
        if matched_stop and self._include_stop_str:
            delta.text += matched_stop
        delta.finish_reason = finish_reason
        delta.matched_stop = matched_stop
        self.finish_reason = finish_reason
        self.matched_stop = matched_stop
        self._record(delta)

    def _record(self, delta: CompletionDelta) -> None:
        self.text_parts.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.top_logprobs.extend(delta.top_logprobs)
