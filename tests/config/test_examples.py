"""Seed 000's Examples 1-4 (and Methods 3/4), as shipped in deploy/examples/scheduler/, validate."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from infermesh_shared.config import load_config

from .conftest import LLAMA3_8B_CONFIG, write_model_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "scheduler"


def flags_of_script(path: Path) -> list[str]:
    """The infermesh-scheduler flags in an example shell script."""
    tokens = shlex.split(path.read_text().replace("\\\n", " "), comments=True)
    start = tokens.index("infermesh-scheduler") + 1
    return [token for token in tokens[start:] if token != "$@"]


@pytest.fixture
def llama70b_dir(tmp_path: Path) -> Path:
    shape = {
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "intermediate_size": 28672,
    }
    return write_model_dir(tmp_path / "llama3-70b", {**LLAMA3_8B_CONFIG, **shape})


def validate(argv: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as done:
        load_config("scheduler", [*argv, "--validate"])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    return json.loads(out.out)


def test_example_1_single_gpu_flags(llama_dir, capsys):
    flags = flags_of_script(EXAMPLES / "single-gpu-dev.sh")
    assert flags[:2] == ["--model-path", "/models/llama3-8b"]
    resolved = validate([*flags, "--model-path", str(llama_dir)], capsys)
    assert (resolved["total_blocks"], resolved["max_batch_size"], resolved["log_level"]) == (
        1000,
        64,
        "debug",
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("production-4gpu.yaml", {"num_workers": 4, "tp_size": 4, "total_blocks": 8000, "max_batch_size": 512,
                                  "log_to_file": True, "log_file": "/var/log/infermesh/scheduler.log",
                                  "worker_endpoint": "tcp://*:5555"}),
        ("high-throughput.yaml", {"max_batch_size": 512, "max_tokens_per_step": 8192, "total_blocks": 10000,
                                  "gpu_memory_utilization": 0.95, "prefix_cache_capacity": 200000}),
        ("low-latency.yaml", {"max_batch_size": 32, "max_tokens_per_step": 1024, "total_blocks": 5000,
                              "gpu_memory_utilization": 0.8, "enable_preemption": False}),
        ("scheduler-config.yaml", {"num_workers": 4, "tp_size": 4, "total_blocks": 5000}),
        ("scheduler-config.json", {"total_blocks": 1000, "max_batch_size": 256}),
        ("grouped-sections.yaml", {"tp_size": 4, "num_workers": 4, "gpu_memory_utilization": 0.85,
                                   "max_model_len": 8192, "max_batch_size": 256,
                                   "max_tokens_per_step": 8192}),
    ],
)  # fmt: skip
def test_example_files_validate(llama70b_dir, capsys, name, expected):
    resolved = validate(["--config-file", str(EXAMPLES / name), "--model-path", str(llama70b_dir)], capsys)
    assert {key: resolved[key] for key in expected} == expected
    assert resolved["model_path"] == str(llama70b_dir)  # the flag beat the file's /models path


def test_seed_error_example_with_an_example_file(llama_dir, capsys):
    with pytest.raises(SystemExit) as done:
        load_config(
            "scheduler",
            [
                "--config-file",
                str(EXAMPLES / "low-latency.yaml"),
                "--model-path",
                str(llama_dir),
                "--gpu-memory-utilization",
                "1.01",
            ],
        )
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "Error: Configuration validation failed\n"
        "  Caused by: gpu_memory_utilization must be in range (0.0, 1.0]\n"
    )
