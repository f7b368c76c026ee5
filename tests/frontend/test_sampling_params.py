"""Sampling defaults; the values themselves are the scheduler's to judge (see
test_frontend_server.py::test_invalid_requests_are_invalid_argument, which goes through it)."""

from __future__ import annotations

import grpc
import pytest
from infermesh.v1 import frontend_pb2
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.sampling_params import SamplingDefaults, resolve_sampling_params

DEFAULTS = SamplingDefaults(default_max_tokens=16, max_model_len=100)


def test_defaults_are_filled_in() -> None:
    params = resolve_sampling_params(frontend_pb2.ClientSamplingParams(), prompt_len=5, defaults=DEFAULTS)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    assert (params.max_tokens, params.n, params.ignore_eos, params.logprobs) == (16, 1, False, 0)
    assert params.repetition_penalty == 1.0 and not params.HasField("seed")


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
        logit_bias={3: 1.5},
    )
    params = resolve_sampling_params(client, prompt_len=5, defaults=DEFAULTS)
    assert params.temperature == 0.0 and params.top_k == 3 and params.seed == 7 and params.n == 2
    assert params.max_tokens == 4 and list(params.stop_token_ids) == [5, 6] and params.ignore_eos
    assert params.top_p == pytest.approx(0.5) and params.min_p == pytest.approx(0.1)
    assert dict(params.logit_bias) == {3: 1.5}


def test_out_of_range_values_are_left_for_the_scheduler() -> None:
    client = frontend_pb2.ClientSamplingParams(temperature=-1, top_k=-1, max_tokens=0)
    params = resolve_sampling_params(client, prompt_len=5, defaults=DEFAULTS)
    assert (params.temperature, params.top_k, params.max_tokens) == (-1, -1, 0)


def test_default_max_tokens_shrinks_to_the_room_left() -> None:
    params = resolve_sampling_params(frontend_pb2.ClientSamplingParams(), prompt_len=95, defaults=DEFAULTS)
    assert params.max_tokens == 5


@pytest.mark.parametrize(
    ("defaults", "prompt_len", "message", "param"),
    [
        (DEFAULTS, 100, r"prompt \(100 tokens\) leaves no room .* max_model_len of 100", "prompt"),
        (SamplingDefaults(0, 0), 5, "max_tokens has no default; give max_tokens", "max_tokens"),
    ],
)
def test_a_default_that_cannot_be_chosen_is_refused(defaults, prompt_len, message, param) -> None:
    with pytest.raises(RequestError, match=message) as refused:
        resolve_sampling_params(frontend_pb2.ClientSamplingParams(), prompt_len, defaults)
    assert (refused.value.code, refused.value.param) == (grpc.StatusCode.INVALID_ARGUMENT, param)
