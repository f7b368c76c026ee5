"""`infermesh bench` against a running cluster, and `infermesh bench scheduler`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _infermesh(*args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "infermesh_cli", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_bench_serving_reports_one_json_line(llama_cluster):
    (report,) = _infermesh(
        "bench",
        "--address",
        llama_cluster.frontend_address,
        "--num-requests",
        "6",
        "--concurrency",
        "3",
        "--prompt-len",
        "8",
        "40",
        "--output-len",
        "5",
        "5",
        "--request-rate",
        "20",
        "--disable-tqdm",
    )
    # EOS is ignored, so every request produces exactly its output length.
    assert report["output_tokens"] == 30
    assert report["num_requests"] == 6
    assert (report["completed"], report["failed"], report["request_rate"]) == (6, 0, 20)
    for key in ("output_tokens_per_s", "requests_per_s"):
        assert report[key] > 0, key
    for metric in ("ttft", "tpot", "itl", "e2e"):
        p50, p90, p99 = (report[f"{metric}_ms_p{pct}"] for pct in (50, 90, 99))
        assert 0 < p50 <= p90 <= p99, metric
    assert report["e2e_ms_p50"] >= report["ttft_ms_p50"]


def test_bench_dataset_sends_exactly_its_requests(llama_cluster, tmp_path):
    dataset = tmp_path / "requests.jsonl"
    lines = [
        {"prompt_token_ids": [5, 6, 7, 8], "output_len": 3},
        {"prompt_token_ids": [9] * 20, "output_len": 6},
    ]
    dataset.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (report,) = _infermesh("bench", "--address", llama_cluster.frontend_address, "--dataset", str(dataset))
    assert (report["num_requests"], report["prompt_tokens"], report["output_tokens"]) == (2, 24, 9)
    assert report["workload"] == str(dataset)


def test_bench_scheduler_times_each_size():
    reports = _infermesh("bench", "scheduler", "--sizes", "4", "16", "--steps", "5")
    assert [r["num_running"] for r in reports] == [4, 16]
    assert all(r["us_per_step"] > 0 and r["steps"] == 5 for r in reports)
