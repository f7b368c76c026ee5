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
    """The request cannot be served as given; the message says what to change (INVALID_ARGUMENT).
    `param` names the request field at fault (OpenAI's error `param`), when one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class SamplingLimits:
    """Service-side bounds the client's parameters are checked against."""

    default_max_tokens: int
    max_stop_strings: int
    # Longest prompt plus output the model accepts (tokens), from the scheduler's GetModelInfo;
    # 0 while the scheduler does not know it yet (it then checks the length itself).
    max_model_len: int
    # Token ids the model has (logit_bias keys are checked against it); 0 = unknown.
    vocab_size: int = 0


def _check_finite(name: str, value: float) -> None:
    if math.isnan(value) or math.isinf(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value}", name)


def validate_stop_strings(stop: list[str], max_stop_strings: int) -> None:
    """Raises InvalidRequestError for too many or empty stop strings."""
    if len(stop) > max_stop_strings:
        raise InvalidRequestError(
            f"too many stop strings: {len(stop)} given, at most {max_stop_strings} allowed "
            "(the frontend's max_stop_strings)",
            "stop",
        )
    for position, text in enumerate(stop):
        if not text:
            raise InvalidRequestError(
                f"stop string #{position} is empty; remove it or give a non-empty string", "stop"
            )


def resolve_sampling_params(
    client: frontend_pb2.ClientSamplingParams, prompt_len: int, limits: SamplingLimits
) -> common_pb2.SamplingParams:
    """Fills defaults into `client` and checks every value; raises InvalidRequestError when one is bad.

    When max_tokens is unset it is the service default, shortened to the room the prompt leaves
    in max_model_len; an explicit max_tokens that does not fit is an error.
    """
    if prompt_len < 1:
        raise InvalidRequestError(
            "the prompt is empty: give non-empty text or at least one token id", "prompt"
        )
    temperature = client.temperature if client.HasField("temperature") else DEFAULT_TEMPERATURE
    _check_finite("temperature", temperature)
    if temperature < 0:
        raise InvalidRequestError(
            f"temperature must be >= 0 (0 means greedy), got {temperature}", "temperature"
        )
    top_p = client.top_p if client.HasField("top_p") else DEFAULT_TOP_P
    _check_finite("top_p", top_p)
    if not 0 < top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1] (1 disables it), got {top_p}", "top_p")
    top_k = client.top_k if client.HasField("top_k") else DEFAULT_TOP_K
    if top_k < 0:
        raise InvalidRequestError(f"top_k must be >= 0 (0 disables it), got {top_k}", "top_k")
    min_p = client.min_p if client.HasField("min_p") else DEFAULT_MIN_P
    _check_finite("min_p", min_p)
    if not 0 <= min_p <= 1:
        raise InvalidRequestError(f"min_p must be in [0, 1] (0 disables it), got {min_p}", "min_p")
    n = client.n if client.HasField("n") else DEFAULT_N
    if n < 1:
        raise InvalidRequestError(f"n (number of completions) must be >= 1, got {n}", "n")
    validate_stop_strings(list(client.stop), limits.max_stop_strings)

    room = limits.max_model_len - prompt_len if limits.max_model_len > 0 else None
    if client.HasField("max_tokens"):
        max_tokens = client.max_tokens
        if max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
        if room is not None and max_tokens > room:
            raise InvalidRequestError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
                f"tokens exceeds the model's max_model_len of {limits.max_model_len} tokens; "
                "shorten the prompt or lower max_tokens",
                "max_tokens",
            )
    elif room is None:
        if not limits.default_max_tokens:
            raise InvalidRequestError(
                "the model's max_model_len is not known yet, so max_tokens has no default; give max_tokens",
                "max_tokens",
            )
        max_tokens = limits.default_max_tokens
    else:
        if room < 1:
            raise InvalidRequestError(
                f"the prompt ({prompt_len} tokens) leaves no room to generate within the model's "
                f"max_model_len of {limits.max_model_len} tokens; shorten the prompt",
                "prompt",
            )
        # default_max_tokens 0: up to the context limit, as vLLM.
        max_tokens = min(limits.default_max_tokens or room, room)

    adjustments = _resolve_adjustments(client, max_tokens, limits.vocab_size)
    params = common_pb2.SamplingParams(
        **adjustments,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        max_tokens=max_tokens,
        stop_token_ids=list(client.stop_token_ids),
        ignore_eos=client.ignore_eos,
        n=n,
        logprobs=client.logprobs,
        top_logprobs=client.top_logprobs,
    )
    if client.HasField("seed"):
        params.seed = client.seed
    return params


def _resolve_adjustments(
    client: frontend_pb2.ClientSamplingParams, max_tokens: int, vocab_size: int
) -> dict[str, object]:
    """Penalties, logit_bias and min_tokens checked (vLLM's ranges) and with defaults filled."""
    presence = client.presence_penalty if client.HasField("presence_penalty") else 0.0
    frequency = client.frequency_penalty if client.HasField("frequency_penalty") else 0.0
    repetition = client.repetition_penalty if client.HasField("repetition_penalty") else 1.0
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        _check_finite(name, value)
        if not -2 <= value <= 2:
            raise InvalidRequestError(f"{name} must be in [-2, 2], got {value}", name)
    _check_finite("repetition_penalty", repetition)
    if not 0 < repetition <= 2:
        raise InvalidRequestError(
            f"repetition_penalty must be in (0, 2] (1 disables it), got {repetition}", "repetition_penalty"
        )
    for token, bias in client.logit_bias.items():
        _check_finite("logit_bias", bias)
        if not -100 <= bias <= 100:
            raise InvalidRequestError(f"logit_bias[{token}] must be in [-100, 100], got {bias}", "logit_bias")
        if vocab_size and token >= vocab_size:
            raise InvalidRequestError(
                f"logit_bias names token id {token}, outside the vocabulary (0..{vocab_size - 1})",
                "logit_bias",
            )
    if client.top_logprobs > 20:
        raise InvalidRequestError(f"top_logprobs must be <= 20, got {client.top_logprobs}", "top_logprobs")
    if client.min_tokens > max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({client.min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens"
        )
    return {
        "presence_penalty": presence,
        "frequency_penalty": frequency,
        "repetition_penalty": repetition,
        "logit_bias": dict(client.logit_bias),
        "min_tokens": client.min_tokens,
    }
