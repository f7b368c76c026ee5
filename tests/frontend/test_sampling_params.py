"""Sampling defaults and the INVALID_ARGUMENT messages for bad values."""

from __future__ import annotations

import pytest
from infermesh.v1 import frontend_pb2
from infermesh_frontend.sampling_params import InvalidRequestError, SamplingLimits, resolve_sampling_params

LIMITS = SamplingLimits(default_max_tokens=16, max_stop_strings=2, max_model_len=100)


def test_defaults_are_filled_in() -> None:
    params = resolve_sampling_params(frontend_pb2.ClientSamplingParams(), prompt_len=5, limits=LIMITS)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    assert (params.max_tokens, params.n, params.ignore_eos, params.logprobs) == (16, 1, False, 0)
    assert not params.HasField("seed")


def test_given_values_pass_through() -> None:
    client = frontend_pb2.ClientSamplingParams(
        temperature=0.0,
        top_p=0.5,
        top_k=3,
        min_p=0.1,
        seed=7,
        max_tokens=4,
        n=2,
        stop_token_ids=[5, 6],
        ignore_eos=True,
        logprobs=1,
    )
    params = resolve_sampling_params(client, prompt_len=5, limits=LIMITS)
    assert params.temperature == 0.0 and params.top_k == 3 and params.seed == 7 and params.n == 2
    assert params.max_tokens == 4 and list(params.stop_token_ids) == [5, 6] and params.ignore_eos
    assert params.top_p == pytest.approx(0.5) and params.min_p == pytest.approx(0.1)


def test_default_max_tokens_shrinks_to_the_room_left() -> None:
    params = resolve_sampling_params(frontend_pb2.ClientSamplingParams(), prompt_len=95, limits=LIMITS)
    assert params.max_tokens == 5


@pytest.mark.parametrize(
    ("fields", "prompt_len", "message"),
    [
        ({}, 0, "prompt is empty"),
        ({"max_tokens": 0}, 5, "max_tokens must be >= 1, got 0"),
        ({"temperature": -0.5}, 5, "temperature must be >= 0"),
        ({"temperature": float("nan")}, 5, "temperature must be a finite number"),
        ({"top_p": 0.0}, 5, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, 5, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, 5, "top_k must be >= 0"),
        ({"min_p": 1.5}, 5, r"min_p must be in \[0, 1\]"),
        ({"min_p": -0.1}, 5, r"min_p must be in \[0, 1\]"),
        ({"n": 0}, 5, "n .* must be >= 1"),
        ({"stop": ["a", "b", "c"]}, 5, "too many stop strings: 3 given, at most 2"),
        ({"stop": ["a", ""]}, 5, "stop string #1 is empty"),
        ({"max_tokens": 20}, 90, r"prompt \(90 tokens\) \+ max_tokens \(20\) = 110 tokens exceeds .* 100"),
        ({}, 100, r"prompt \(100 tokens\) leaves no room .* max_model_len of 100"),
    ],
)
def test_invalid_values_have_actionable_messages(fields: dict, prompt_len: int, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        resolve_sampling_params(frontend_pb2.ClientSamplingParams(**fields), prompt_len, LIMITS)
