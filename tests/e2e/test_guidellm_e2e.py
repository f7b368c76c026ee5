"""A third-party OpenAI load generator (guidellm, pinned in requirements-dev.txt) against
`infermesh up`: streaming chat and streaming completions, zero errors, TTFT reported.

guidellm gets only what it needs from any OpenAI server: the target URL, its data shape and the
load; it finds the model via /v1/models and loads the tokenizer by the served model id (the
model directory, as `vllm serve DIR` serves it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import build_served_model
from tests.free_port import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
GUIDELLM = Path(sys.executable).with_name("guidellm")


def _guidellm(base: str, request_format: str, out: Path, env: dict[str, str]) -> dict:
    argv = [
        str(GUIDELLM),
        "run",
        "--backend",
        f"kind=openai_http,target={base},request_format={request_format}",
        "--data",
        "kind=synthetic_text,prompt_tokens=24,output_tokens=8",
        "--profile",
        "kind=concurrent,streams=2",
        "--constraint",
        "kind=max_requests,count=8",
        "--disable-progress",
        "--output",
        f"kind=json,path={out}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def _numbers(report: dict) -> tuple[int, int, float]:
    """(completed, errored, mean TTFT ms) of the report's one benchmark."""
    metrics = report["benchmarks"][0]["metrics"]
    totals = metrics["request_totals"]
    return totals["successful"], totals["errored"], metrics["time_to_first_token_ms"]["successful"]["mean"]


def test_guidellm_streams_chat_and_completions_without_errors(tmp_path):
    model_dir = build_served_model("llama", tmp_path / "model", max_position_embeddings=256)
    http_port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    up = subprocess.Popen(
        [sys.executable, "-m", "infermesh_cli", "up", str(model_dir), "--port", "0",
         "--http-port", str(http_port), "--worker-arg=--num-threads=1", "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines, url = [], None
        deadline = time.monotonic() + 240
        assert up.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"OpenAI-compatible HTTP API on (http://\S+)/v1$", line.strip())
            url = match.group(1) if match else None
        assert url, "".join(lines)
        for request_format in ("/v1/chat/completions", "/v1/completions"):
            report = _guidellm(
                url, request_format, tmp_path / f"{request_format.strip('/').replace('/', '-')}.json", env
            )
            completed, errored, ttft = _numbers(report)
            print(
                f"guidellm {request_format}: {completed} completed, {errored} errored, "
                f"mean TTFT {ttft:.1f} ms"
            )
            assert (completed, errored) == (8, 0)
            assert ttft > 0
    finally:
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)
        shutil.rmtree(tmp_path / "model", ignore_errors=True)
