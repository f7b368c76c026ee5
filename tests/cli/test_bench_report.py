"""The numbers `infermesh bench` reports, from hand-made request timings."""

from __future__ import annotations

import json
import statistics

import pytest
from infermesh_cli.bench_backends import RequestResult
from infermesh_cli.bench_report import figures_of, parse_slos, percentile, summarize
from infermesh_cli.bench_runner import arrival_gaps
from infermesh_cli.bench_workload import BenchRequest, load_dataset


def _result(start: float, chunks: list[tuple[float, int]], end: float, prompt: int = 10) -> RequestResult:
    return RequestResult(start=start, chunks=chunks, end=end, prompt_tokens=prompt)


def test_ttft_itl_tpot_and_e2e_of_one_request() -> None:
    # First token at 0.1 s, then a chunk of two tokens 0.04 s later, then one 0.01 s later.
    figures = figures_of(_result(0.0, [(0.1, 1), (0.14, 2), (0.15, 1)], 0.16))
    assert figures.ttft_ms == pytest.approx(100.0)
    assert figures.itls_ms == pytest.approx([20.0, 20.0, 10.0])
    assert figures.e2e_ms == pytest.approx(160.0)
    assert figures.tpot_ms == pytest.approx(60.0 / 3)
    assert figures.output_tokens == 4


def test_percentiles_interpolate_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 99) == 0.0


def test_summary_counts_failures_and_goodput() -> None:
    fast = _result(0.0, [(0.05, 1), (0.06, 1)], 0.06)
    slow = _result(0.0, [(0.5, 1), (0.6, 1)], 0.6)
    failed = RequestResult(start=0.0, end=0.1, error="UNAVAILABLE: down")
    summary = summarize([fast, slow, failed], duration_s=2.0, slos=parse_slos(["ttft:100", "e2e:1000"]))
    assert (summary["completed"], summary["failed"], summary["goodput_requests"]) == (2, 1, 1)
    assert summary["goodput_requests_per_s"] == 0.5
    assert summary["output_tokens"] == 4 and summary["prompt_tokens"] == 20
    assert summary["ttft_ms_p50"] == pytest.approx(275.0)
    assert summary["ttft_ms_p99"] >= summary["ttft_ms_p90"] >= summary["ttft_ms_p50"]
    assert summary["first_errors"] == ["UNAVAILABLE: down"]
    json.dumps(summary)


@pytest.mark.parametrize(
    "specs,message",
    [(["ttfb:100"], "one of ttft"), (["ttft:fast"], "milliseconds"), (["tpot:0"], "> 0")],
)
def test_bad_slos_are_refused(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_slos(specs)


def test_poisson_arrivals_are_seeded_with_the_asked_mean() -> None:
    gaps = arrival_gaps(4000, request_rate=20.0, seed=3)
    assert gaps == arrival_gaps(4000, request_rate=20.0, seed=3)
    assert statistics.mean(gaps) == pytest.approx(1 / 20.0, rel=0.05)
    # Exponential gaps: the standard deviation equals the mean (a fixed-interval sender's would be 0).
    assert statistics.stdev(gaps) == pytest.approx(1 / 20.0, rel=0.1)
    assert arrival_gaps(3, float("inf"), seed=0) == [0.0, 0.0, 0.0]


def test_dataset_mixes_text_and_token_id_prompts(tmp_path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        json.dumps({"prompt": "Tell me a story", "output_len": 8})
        + "\n"
        + json.dumps({"prompt_token_ids": [4, 5], "output_len": 2})
        + "\n"
    )
    assert load_dataset(path) == [BenchRequest([], 8, "Tell me a story"), BenchRequest([4, 5], 2)]
    path.write_text(json.dumps({"prompt": "x", "prompt_token_ids": [1], "output_len": 2}) + "\n")
    with pytest.raises(ValueError, match="exactly one of"):
        load_dataset(path)
