"""What a request is when it reaches the scheduler core, and what the core hands back."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from infermesh_scheduler.core.errors import EndReason


class PriorityClass(enum.IntEnum):
    """Latency class (seed 002): a smaller value is served first under every policy."""

    LATENCY_CRITICAL = 1
    THROUGHPUT = 2


@dataclass(slots=True)
class SamplingOptions:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    max_tokens: int
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    n: int = 1
    logprobs: int = 0
    # Applied by the worker; the scheduler only carries them to it.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    top_logprobs: int = 0

    @classmethod
    def greedy(
        cls, max_tokens: int, *, ignore_eos: bool = False, n: int = 1, stop_token_ids: tuple[int, ...] = ()
    ) -> SamplingOptions:
        """Argmax decoding of up to max_tokens tokens (benchmarks and tests)."""
        return cls(
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            seed=None,
            max_tokens=max_tokens,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            n=n,
        )


@dataclass(slots=True)
class RequestSpec:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    # Larger runs first under the priority policy; None takes the scheduler's default_priority.
    priority: int | None
    priority_class: PriorityClass
    # Seconds the request may take, counted from arrival_time: the remaining time of its gRPC
    # deadline when it arrived (never a wall-clock instant from another host); None means none.
    timeout_s: float | None
    client_id: str
    # time.monotonic() seconds when the request arrived.
    arrival_time: float
    # Tokens generated for this request elsewhere (failover); they count towards max_tokens.
    resumed_output_token_ids: list[int] = field(default_factory=list)
    # Prefix-cache namespace (one per tenant): blocks are reused only within it.
    cache_salt: str = ""


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


@dataclass(slots=True)
class AdmissionError:
    """Why the scheduler ended a request itself, and a message a person can act on."""

    reason: EndReason
    message: str


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    index: int
    new_token_ids: list[int]
    # A shared empty tuple when the request asked for no logprobs.
    new_logprobs: Sequence[float]
    finish_reason: FinishReason | None
    # Set on the request's last output (all n completions finished).
    usage: Usage | None = None
    error: AdmissionError | None = None
    # Per new token: (alternative ids, their logprobs), when sampling.top_logprobs > 0.
    new_top_logprobs: list[tuple[tuple[int, ...], tuple[float, ...]]] | None = None
