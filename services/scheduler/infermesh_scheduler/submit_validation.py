"""Checks a SubmitRequest before it reaches the core; every refusal says what to change."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2


@dataclass(slots=True, frozen=True)
class ModelLimits:
    """What the served model accepts (tokens)."""

    vocab_size: int
    max_model_len: int


class SubmitRejected(Exception):
    """A request the scheduler refuses; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> SubmitRejected:
    return SubmitRejected(grpc.StatusCode.INVALID_ARGUMENT, message)


def _check_token_ids(ids, what: str, vocab_size: int) -> None:
    if ids and max(ids) >= vocab_size:
        position, bad = next((i, t) for i, t in enumerate(ids) if t >= vocab_size)
        raise _invalid(
            f"{what} token id {bad} at position {position} is out of range: "
            f"the model's vocab_size is {vocab_size}, so ids must be < {vocab_size}"
        )


def validate_submit(request: scheduler_pb2.SubmitRequest, limits: ModelLimits) -> None:
    """Raises SubmitRejected(INVALID_ARGUMENT) when `request` cannot be served as sent."""
    if not request.request_id:
        raise _invalid("request_id is empty: give each request a unique id (it is used by Abort)")
    prompt = request.prompt_token_ids
    if len(prompt) == 0:
        raise _invalid("prompt_token_ids is empty: a request needs at least one prompt token")
    _check_token_ids(prompt, "prompt", limits.vocab_size)
    _check_token_ids(request.resumed_output_token_ids, "resumed output", limits.vocab_size)
    if not request.HasField("sampling"):
        raise _invalid("sampling is missing: set at least sampling.max_tokens (>= 1) and sampling.n (>= 1)")
    s = request.sampling
    _check_token_ids(s.stop_token_ids, "stop", limits.vocab_size)
    if s.max_tokens < 1:
        raise _invalid(f"sampling.max_tokens is {s.max_tokens}: it must be >= 1")
    if len(prompt) + s.max_tokens > limits.max_model_len:
        raise _invalid(
            f"prompt ({len(prompt)} tokens) + max_tokens ({s.max_tokens}) = {len(prompt) + s.max_tokens} "
            f"exceeds max_model_len {limits.max_model_len}: shorten the prompt or lower max_tokens"
        )
    if len(request.resumed_output_token_ids) >= s.max_tokens:
        raise _invalid(
            f"resumed_output_token_ids has {len(request.resumed_output_token_ids)} tokens, which already "
            f"reaches max_tokens ({s.max_tokens}): nothing is left to generate"
        )
    if not s.temperature >= 0:  # also refuses NaN
        raise _invalid(f"sampling.temperature is {s.temperature}: it must be >= 0 (0 means greedy)")
    if not 0 < s.top_p <= 1:
        raise _invalid(f"sampling.top_p is {s.top_p}: it must be in (0, 1] (1 disables nucleus sampling)")
    if s.top_k < 0:
        raise _invalid(f"sampling.top_k is {s.top_k}: it must be >= 0 (0 disables top-k)")
    if not 0 <= s.min_p <= 1:
        raise _invalid(f"sampling.min_p is {s.min_p}: it must be in [0, 1] (0 disables min-p)")
    if s.n < 1:
        raise _invalid(f"sampling.n is {s.n}: it must be >= 1 (the number of completions)")
    if request.priority_class not in common_pb2.PriorityClass.values():
        allowed = ", ".join(common_pb2.PriorityClass.keys())
        raise _invalid(f"priority_class {request.priority_class} is unknown: use one of {allowed}")
    if request.deadline_unix_ms:
        raise _invalid(
            "deadline_unix_ms is no longer read (a wall-clock instant breaks with clock skew between "
            "hosts): leave it 0 and set the gRPC deadline (timeout) of the Submit call instead"
        )
    if s.n > 1 and request.resumed_output_token_ids:
        raise _invalid("resumed_output_token_ids needs sampling.n == 1: a resumed request has one completion")
