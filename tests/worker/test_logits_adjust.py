"""Penalties, logit_bias and min_tokens on the worker: against transformers' processors and the
OpenAI formula, batched rows equal rows alone, and rows that ask nothing are left as they are."""

from __future__ import annotations

import torch
from infermesh.v1 import common_pb2
from infermesh_worker.layers.logits_adjust import AdjustRow, LogitsAdjustment, adjust_logits
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

VOCAB = 32


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_repetition_penalty_matches_transformers():
    logits = _logits(1)
    tokens = [3, 5, 5, 9, 20]
    row = AdjustRow(LogitsAdjustment(repetition_penalty=1.3), tokens, num_output_tokens=2)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([tokens]), logits.clone())
    torch.testing.assert_close(adjust_logits(logits, [row]), expected)


def test_presence_and_frequency_count_generated_tokens_only():
    logits = _logits(1)
    prompt, outputs = [7, 7, 8], [4, 4, 4, 6]
    adjustment = LogitsAdjustment(presence_penalty=0.5, frequency_penalty=0.25)
    got = adjust_logits(logits, [AdjustRow(adjustment, prompt + outputs, len(outputs))])
    expected = logits.clone()
    expected[0, 4] -= 3 * 0.25 + 0.5
    expected[0, 6] -= 1 * 0.25 + 0.5
    torch.testing.assert_close(got, expected)  # 7 and 8 (prompt only) untouched


def test_logit_bias_and_min_tokens():
    logits = _logits(1)
    adjustment = LogitsAdjustment(logit_bias=((2, 100.0), (3, -100.0)), min_tokens=2, end_token_ids=(0, 1))
    early = adjust_logits(logits, [AdjustRow(adjustment, [5, 6], 1)])
    assert early[0].argmax() == 2 and early[0, 3] == logits[0, 3] - 100
    assert torch.isinf(early[0, :2]).all()
    late = adjust_logits(logits, [AdjustRow(adjustment, [5, 6, 7], 2)])
    assert torch.isfinite(late[0, :2]).all()


def test_batched_rows_equal_rows_alone_and_plain_rows_are_untouched():
    logits = _logits(3, seed=1)
    rows = [
        AdjustRow(LogitsAdjustment(repetition_penalty=1.5, frequency_penalty=1.0), [1, 2, 2, 3], 2),
        AdjustRow(None, [4, 5], 1),
        AdjustRow(LogitsAdjustment(presence_penalty=-1.0, logit_bias=((9, 5.0),)), [6, 9, 9], 2),
    ]
    batched = adjust_logits(logits, rows)
    for index, row in enumerate(rows):
        torch.testing.assert_close(
            batched[index : index + 1], adjust_logits(logits[index : index + 1], [row])
        )
    torch.testing.assert_close(batched[1], logits[1])
    assert adjust_logits(logits, [AdjustRow(None, [1], 0)] * 3) is logits


def test_from_params_asks_nothing_by_default_and_keeps_eos_unless_ignored():
    assert LogitsAdjustment.from_params(common_pb2.SamplingParams(repetition_penalty=1.0), [2]) is None
    params = common_pb2.SamplingParams(min_tokens=3, stop_token_ids=[7])
    assert LogitsAdjustment.from_params(params, [2]).end_token_ids == (2, 7)
    params.ignore_eos = True
    assert LogitsAdjustment.from_params(params, [2]).end_token_ids == (7,)
