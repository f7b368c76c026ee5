"""The ranges of the values a sampler works with, written once: the scheduler checks a request
against them before admitting it (core/request_check.py), the worker checks every sequence it is
sent before sampling with it (plan_state.py), since a value outside them turns the sampler's
distribution into NaN or an out-of-range index on every rank at once. Pure Python."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

# Alternatives returned per token (vLLM's default max_logprobs, OpenAI's top_logprobs limit).
MAX_TOP_LOGPROBS = 20


class SamplingValues(Protocol):
    """What the rules read: the scheduler's SamplingOptions and the worker's SamplingSpec both are."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    logprobs: int
    top_logprobs: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: Sequence[tuple[int, float]]


def sampling_violation(s: SamplingValues) -> tuple[str, str] | None:
    """(field, message) for the first value of `s` outside its range, or None. The field is the
    SamplingParams field name; the message says what to send instead."""
    for name, value in (("temperature", s.temperature), ("top_p", s.top_p), ("min_p", s.min_p)):
        if not math.isfinite(value):
            return name, f"{name} must be a finite number, got {value}"
    if s.temperature < 0:
        return "temperature", f"temperature must be >= 0 (0 means greedy), got {s.temperature}"
    if not 0 < s.top_p <= 1:
        return "top_p", f"top_p must be in (0, 1] (1 disables it), got {s.top_p}"
    if s.top_k < 0:
        return "top_k", f"top_k must be >= 0 (0 disables it), got {s.top_k}"
    if not 0 <= s.min_p <= 1:
        return "min_p", f"min_p must be in [0, 1] (0 disables it), got {s.min_p}"
    if s.logprobs < 0:
        return "logprobs", f"logprobs must be >= 0, got {s.logprobs}"
    if s.top_logprobs > MAX_TOP_LOGPROBS:
        return "top_logprobs", f"top_logprobs must be <= {MAX_TOP_LOGPROBS}, got {s.top_logprobs}"
    return _adjustment_violation(s)


def _adjustment_violation(s: SamplingValues) -> tuple[str, str] | None:
    # vLLM's ranges for the OpenAI sampling extras.
    for name, value in (("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)):
        if not (math.isfinite(value) and -2 <= value <= 2):
            return name, f"{name} must be in [-2, 2], got {value}"
    if not (math.isfinite(s.repetition_penalty) and 0 < s.repetition_penalty <= 2):
        return (
            "repetition_penalty",
            f"repetition_penalty must be in (0, 2] (1 disables it), got {s.repetition_penalty}",
        )
    for token, bias in s.logit_bias:
        if not (math.isfinite(bias) and -100 <= bias <= 100):
            return "logit_bias", f"logit_bias[{token}] must be in [-100, 100], got {bias}"
    return None
