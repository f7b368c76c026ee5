"""Client sampling parameters -> the scheduler's fully resolved SamplingParams, with validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from infermesh.v1 import common_pb2, frontend_pb2

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 0
DEFAULT_MIN_P = 0.0
DEFAULT_N = 1


class InvalidRequestError(ValueError):
    """The request cannot be served as given; the message says what to change (INVALID_ARGUMENT)."""


@dataclass(slots=True)
class SamplingLimits:
    """Service-side bounds the client's parameters are checked against."""

    default_max_tokens: int
    max_stop_strings: int
    # Longest prompt plus output the model accepts (tokens), from the scheduler's GetModelInfo;
    # 0 while the scheduler does not know it yet (it then checks the length itself).
    max_model_len: int


def _check_finite(name: str, value: float) -> None:
    if math.isnan(value) or math.isinf(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value}")


def validate_stop_strings(stop: list[str], max_stop_strings: int) -> None:
    """Raises InvalidRequestError for too many or empty stop strings."""
    if len(stop) > max_stop_strings:
        raise InvalidRequestError(
            f"too many stop strings: {len(stop)} given, at most {max_stop_strings} allowed "
            "(the frontend's max_stop_strings)"
        )
    for position, text in enumerate(stop):
        if not text:
            raise InvalidRequestError(
                f"stop string #{position} is empty; remove it or give a non-empty string"
            )


def resolve_sampling_params(
    client: frontend_pb2.ClientSamplingParams, prompt_len: int, limits: SamplingLimits
) -> common_pb2.SamplingParams:
    """Fills defaults into `client` and checks every value; raises InvalidRequestError when one is bad.

    When max_tokens is unset it is the service default, shortened to the room the prompt leaves
    in max_model_len; an explicit max_tokens that does not fit is an error.
    """
    if prompt_len < 1:
        raise InvalidRequestError("the prompt is empty: give non-empty text or at least one token id")
    temperature = client.temperature if client.HasField("temperature") else DEFAULT_TEMPERATURE
    _check_finite("temperature", temperature)
    if temperature < 0:
        raise InvalidRequestError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    top_p = client.top_p if client.HasField("top_p") else DEFAULT_TOP_P
    _check_finite("top_p", top_p)
    if not 0 < top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")
    top_k = client.top_k if client.HasField("top_k") else DEFAULT_TOP_K
    if top_k < 0:
        raise InvalidRequestError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    min_p = client.min_p if client.HasField("min_p") else DEFAULT_MIN_P
    _check_finite("min_p", min_p)
    if not 0 <= min_p <= 1:
        raise InvalidRequestError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")
    n = client.n if client.HasField("n") else DEFAULT_N
    if n < 1:
        raise InvalidRequestError(f"n (number of completions) must be >= 1, got {n}")
    validate_stop_strings(list(client.stop), limits.max_stop_strings)

    room = limits.max_model_len - prompt_len if limits.max_model_len > 0 else None
    if client.HasField("max_tokens"):
        max_tokens = client.max_tokens
        if max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {max_tokens}")
        if room is not None and max_tokens > room:
            raise InvalidRequestError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
                f"tokens exceeds the model's max_model_len of {limits.max_model_len} tokens; "
                "shorten the prompt or lower max_tokens"
            )
    elif room is None:
        max_tokens = limits.default_max_tokens
    else:
        if room < 1:
            raise InvalidRequestError(
                f"the prompt ({prompt_len} tokens) leaves no room to generate within the model's "
                f"max_model_len of {limits.max_model_len} tokens; shorten the prompt"
            )
        max_tokens = min(limits.default_max_tokens, room)

    params = common_pb2.SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        max_tokens=max_tokens,
        stop_token_ids=list(client.stop_token_ids),
        ignore_eos=client.ignore_eos,
        n=n,
        logprobs=client.logprobs,
    )
    if client.HasField("seed"):
        params.seed = client.seed
    return params
