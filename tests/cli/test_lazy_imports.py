"""The CLI's light commands must not pay for torch/transformers: `infermesh --help` used to take ~4.7 s.

Each case runs `main(argv)` in a fresh interpreter and lists which heavy modules ended up in
sys.modules; a module-level `import torch` anywhere on the path of a light command fails it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.free_port import free_port

HEAVY_MODULES = ("torch", "transformers", "safetensors", "tokenizers")

_PROBE = """
import json, sys
from infermesh_cli.__main__ import main
argv = json.loads(sys.argv[1])
try:
    main(argv)
except SystemExit:
    pass
heavy = json.loads(sys.argv[2])
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def _heavy_modules_after(argv: list[str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY_MODULES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["up", "--help"],
        ["bench", "--help"],
        ["generate", "--help"],
        ["make-model", "--help"],
        ["config", "--help"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_imports_no_model_stack(argv: list[str]) -> None:
    assert _heavy_modules_after(argv) == []


def test_generate_imports_no_model_stack() -> None:
    # Nobody listens there: generate fails fast with UNAVAILABLE after doing its real work path.
    argv = ["generate", "hi", "--address", f"127.0.0.1:{free_port()}", "--timeout", "2"]
    assert _heavy_modules_after(argv) == []
