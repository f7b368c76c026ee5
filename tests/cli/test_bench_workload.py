"""The benchmark's request lists: the fixed peers-64 workload and the dataset file format."""

from __future__ import annotations

import json
import random

import pytest
from infermesh_cli.bench_workload import (
    PEERS_64_TOTALS,
    BenchRequest,
    check_fits,
    fit_to_vocab,
    load_dataset,
    peers_64,
)


def test_peers_64_is_issue_17s_workload():
    requests = peers_64()
    assert len(requests) == 64
    assert (sum(len(r.prompt) for r in requests), sum(r.max_tokens for r in requests)) == PEERS_64_TOTALS
    # The draw order is part of the definition: lengths, then that many ids, per request.
    rng = random.Random(0)
    first_len, first_out = rng.randint(32, 512), rng.randint(16, 128)
    assert (len(requests[0].prompt), requests[0].max_tokens) == (first_len, first_out)
    assert requests[0].prompt[:3] == [rng.randint(3, 31999) for _ in range(3)]
    assert all(3 <= t <= 31999 for r in requests for t in r.prompt)


def test_dataset_round_trip(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt_token_ids": [5, 6, 7], "output_len": 4}\n\n{"prompt_token_ids": [1], "output_len": 1}\n'
    )
    assert load_dataset(path) == [BenchRequest([5, 6, 7], 4), BenchRequest([1], 1)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected an object"),
        (json.dumps({"prompt_token_ids": [], "output_len": 3}), "prompt_token_ids"),
        (json.dumps({"prompt_token_ids": [1, -2], "output_len": 3}), "prompt_token_ids"),
        (json.dumps({"prompt_token_ids": [1], "output_len": 0}), "output_len"),
        (json.dumps({"prompt_token_ids": [1]}), "output_len"),
    ],
)
def test_dataset_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt_token_ids": [1], "output_len": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(path)
    assert f"{path}:2" in str(info.value)


def test_empty_or_missing_dataset_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no requests"):
        load_dataset(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(tmp_path / "absent.jsonl")


def test_small_vocab_folds_ids_but_keeps_lengths():
    requests = [BenchRequest([10, 2050, 4100], 7)]
    folded, changed = fit_to_vocab(requests, 2048)
    assert changed and folded == [BenchRequest([10, 2, 4], 7)]
    assert fit_to_vocab(folded, 2048) == (folded, False)


def test_workload_longer_than_the_model_is_refused():
    with pytest.raises(ValueError, match="max_model_len=8"):
        check_fits([BenchRequest([1] * 5, 4)], 8)
    check_fits([BenchRequest([1] * 5, 3)], 8)
    check_fits([BenchRequest([1] * 5, 300)], 0)
