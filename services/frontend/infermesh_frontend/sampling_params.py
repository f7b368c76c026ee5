"""Client sampling parameters -> the scheduler's SamplingParams, with the client-facing defaults
filled in. The values are the scheduler's to judge (its check_request answers INVALID_ARGUMENT
naming the field); only a default that cannot be chosen is refused here."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from infermesh.v1 import common_pb2, frontend_pb2

from infermesh_frontend.request_error import RequestError

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 0
DEFAULT_MIN_P = 0.0
DEFAULT_N = 1
DEFAULT_REPETITION_PENALTY = 1.0


@dataclass(slots=True)
class SamplingDefaults:
    """What an unset max_tokens becomes."""

    default_max_tokens: int
    # Longest prompt plus output the model accepts (tokens), from the scheduler's GetModelInfo;
    # 0 while the scheduler does not know it yet.
    max_model_len: int


def _value(client: frontend_pb2.ClientSamplingParams, name: str, default: float) -> float:
    return getattr(client, name) if client.HasField(name) else default


def resolve_sampling_params(
    client: frontend_pb2.ClientSamplingParams, prompt_len: int, defaults: SamplingDefaults
) -> common_pb2.SamplingParams:
    """`client` with every unset value filled in; raises RequestError when max_tokens is unset and
    has no default.

    An unset max_tokens is the service default, shortened to the room the prompt leaves in
    max_model_len (0: all that room, as vLLM).
    """
    params = common_pb2.SamplingParams(
        temperature=_value(client, "temperature", DEFAULT_TEMPERATURE),
        top_p=_value(client, "top_p", DEFAULT_TOP_P),
        top_k=int(_value(client, "top_k", DEFAULT_TOP_K)),
        min_p=_value(client, "min_p", DEFAULT_MIN_P),
        max_tokens=client.max_tokens
        if client.HasField("max_tokens")
        else _default_max_tokens(prompt_len, defaults),
        stop_token_ids=list(client.stop_token_ids),
        ignore_eos=client.ignore_eos,
        n=int(_value(client, "n", DEFAULT_N)),
        logprobs=client.logprobs,
        top_logprobs=client.top_logprobs,
        presence_penalty=_value(client, "presence_penalty", 0.0),
        frequency_penalty=_value(client, "frequency_penalty", 0.0),
        repetition_penalty=_value(client, "repetition_penalty", DEFAULT_REPETITION_PENALTY),
        logit_bias=dict(client.logit_bias),
        min_tokens=client.min_tokens,
    )
    if client.HasField("seed"):
        params.seed = client.seed
    return params


def _default_max_tokens(prompt_len: int, defaults: SamplingDefaults) -> int:
    if defaults.max_model_len <= 0:
        if not defaults.default_max_tokens:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the model's max_model_len is not known yet, so max_tokens has no default; give max_tokens",
                "max_tokens",
            )
        return defaults.default_max_tokens
    room = defaults.max_model_len - prompt_len
    if room < 1:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the prompt ({prompt_len} tokens) leaves no room to generate within the model's "
            f"max_model_len of {defaults.max_model_len} tokens; shorten the prompt",
            "prompt",
        )
    return min(defaults.default_max_tokens or room, room)
