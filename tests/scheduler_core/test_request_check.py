"""check_request: every request rule, once, with a message that says what to change."""

from __future__ import annotations

import dataclasses

import pytest
from infermesh_scheduler.core import InvalidRequestError
from infermesh_scheduler.core.request_check import RequestLimits, check_request

from tests.scheduler_core.builders import make_spec

LIMITS = RequestLimits(vocab_size=50, max_model_len=100, enable_cow=False)


def with_sampling(spec, **changes):
    spec.sampling = dataclasses.replace(spec.sampling, **changes)
    return spec


@pytest.mark.parametrize(
    ("prompt", "sampling", "message"),
    [
        ([], {}, "prompt_token_ids is empty"),
        ([1, 2], {"max_tokens": 0}, "max_tokens must be >= 1, got 0"),
        ([1, 2], {"temperature": -0.5}, r"temperature must be >= 0 \(0 means greedy\), got -0.5"),
        ([1, 2], {"temperature": float("nan")}, "temperature must be a finite number"),
        ([1, 2], {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ([1, 2], {"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ([1, 2], {"top_k": -1}, "top_k must be >= 0"),
        ([1, 2], {"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ([1, 2], {"min_p": -0.1}, r"min_p must be in \[0, 1\]"),
        ([1, 2], {"n": 0}, "n .* must be >= 1"),
        ([1, 2], {"logprobs": -1}, "logprobs must be >= 0"),
        (
            [1] * 90,
            {"max_tokens": 20},
            r"prompt \(90 tokens\) \+ max_tokens \(20\) = 110 tokens exceeds "
            r"the model's max_model_len of 100",
        ),
        (
            [1, 50],
            {},
            "prompt token id 50 at position 1 is outside the vocabulary: the model's vocab_size is 50",
        ),
        ([1, 2], {"stop_token_ids": (7, 99)}, "stop token id 99 at position 1"),
        ([1, 2], {"n": 2}, "enable_cow=true"),
        ([1, 2], {"presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\], got 2.5"),
        ([1, 2], {"frequency_penalty": float("nan")}, r"frequency_penalty must be in \[-2, 2\]"),
        ([1, 2], {"repetition_penalty": 0.0}, r"repetition_penalty must be in \(0, 2\]"),
        ([1, 2], {"logit_bias": ((5, 101.0),)}, r"logit_bias\[5\] must be in \[-100, 100\]"),
        (
            [1, 2],
            {"logit_bias": ((77, 1.0),)},
            "logit_bias token id 77 at position 0 is outside the vocabulary",
        ),
        ([1, 2], {"top_logprobs": 21}, "top_logprobs must be <= 20"),
        ([1, 2], {"min_tokens": 9}, r"min_tokens \(9\) must be <= max_tokens \(8\)"),
    ],
)
def test_each_rule_names_the_field_and_the_fix(prompt, sampling, message):
    spec = with_sampling(make_spec("r", prompt), **sampling)
    with pytest.raises(InvalidRequestError, match=message) as refused:
        check_request(spec, LIMITS)
    # The field travels beside the message (the frontend names it to its client from this).
    assert refused.value.field == (f"sampling.{next(iter(sampling))}" if sampling else "prompt_token_ids")


def test_resumed_output_rules():
    spec = make_spec("r", [1, 2], max_tokens=3, resumed=[4, 5, 6])
    with pytest.raises(InvalidRequestError, match="already reach max_tokens"):
        check_request(spec, LIMITS)
    spec = make_spec("r", [1, 2], max_tokens=8, resumed=[4], n=2)
    with pytest.raises(InvalidRequestError, match="resumed_output_token_ids needs n == 1"):
        check_request(spec, dataclasses.replace(LIMITS, enable_cow=True))
    spec = make_spec("r", [1, 2], max_tokens=8, resumed=[4, 77])
    with pytest.raises(InvalidRequestError, match="resumed output token id 77 at position 1"):
        check_request(spec, LIMITS)


def test_a_valid_request_passes_and_vocab_zero_skips_the_id_check():
    check_request(make_spec("r", [1, 2, 49], max_tokens=4), LIMITS)
    check_request(make_spec("r", [1, 2, 4900], max_tokens=4), dataclasses.replace(LIMITS, vocab_size=0))
    check_request(make_spec("r", [1], n=3), dataclasses.replace(LIMITS, enable_cow=True))
