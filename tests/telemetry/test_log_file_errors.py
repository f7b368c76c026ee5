"""A log file that cannot be opened stops every service with the config error block, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.model_factory import build_random_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.model_factory import write_test_tokenizer

    path = build_random_model("llama", tmp_path_factory.mktemp("model"), vocab_size=300)
    write_test_tokenizer(path, 300)
    return path


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("infermesh_scheduler", ["--model-path", "{model}"]),
        ("infermesh_worker", ["--scheduler-address", "127.0.0.1:1"]),
        ("infermesh_frontend", ["--model-path", "{model}", "--scheduler-addresses", "127.0.0.1:1"]),
    ],
)
def test_unwritable_log_file_is_a_config_error(model_dir, tmp_path, module, args):
    unwritable = tmp_path / "not-a-dir"
    unwritable.write_text("a file where a directory is needed")
    argv = [a.replace("{model}", str(model_dir)) for a in args]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            *argv,
            "--port",
            "0",
            "--log-to-file",
            "--log-file",
            f"{unwritable}/x.log",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Error: Configuration validation failed" in result.stderr
    assert f"log_file '{unwritable}/x.log' cannot be opened" in result.stderr
    assert "Traceback" not in result.stderr
