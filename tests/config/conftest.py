"""Fixtures for the config tests: real Hugging Face style model directories (config files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Llama 3 8B's real shape: the scheduler only reads these files, never weights.
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "vocab_size": 128256,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
    "rope_theta": 500000.0,
}
LLAMA3_GENERATION_CONFIG = {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}


def write_model_dir(root: Path, config: dict, generation: dict | None = None) -> Path:
    """A model directory holding config.json (and generation_config.json when given)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if generation is not None:
        (root / "generation_config.json").write_text(json.dumps(generation))
    return root


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    """A Llama-3-8B-shaped model directory with a generation_config.json EOS list."""
    return write_model_dir(tmp_path / "llama3-8b", LLAMA3_8B_CONFIG, LLAMA3_GENERATION_CONFIG)


@pytest.fixture
def write_file(tmp_path: Path):
    """Write a config file under tmp_path and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
