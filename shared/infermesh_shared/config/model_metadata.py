"""Reads a Hugging Face model directory's config.json + generation_config.json into one record.

Plain JSON only: the scheduler uses this and must not import transformers or torch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ModelMetadataError(ValueError):
    """config.json is missing, unreadable or lacks a field the services need."""


@dataclass(slots=True, frozen=True)
class ModelMetadata:
    """What the services need to know about a model without loading its weights."""

    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # e.g. "llama", "qwen2", "qwen3", "mistral"
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None  # as written in config.json ("bfloat16", ...), None if absent
    model_name: str = ""  # the model directory's name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelMetadataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelMetadataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelMetadataError(f"{path} must hold a JSON object")
    return data


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if v is not None]


def parse_custom_config(custom_config: str | dict[str, Any] | None) -> dict[str, Any]:
    """The config.json overrides given as custom_config (a JSON object, or its text)."""
    if custom_config is None or custom_config == "":
        return {}
    if isinstance(custom_config, dict):
        return dict(custom_config)
    try:
        parsed = json.loads(custom_config)
    except json.JSONDecodeError as exc:
        raise ModelMetadataError(f"custom_config is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ModelMetadataError(f"custom_config must be a JSON object (got {type(parsed).__name__})")
    return parsed


def _required_int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelMetadataError(f"{path} must give {key} as a positive integer (got {value!r})")
    return value


def read_model_metadata(
    model_path: str | Path, custom_config: str | dict[str, Any] | None = None
) -> ModelMetadata:
    """Metadata of the model under model_path; custom_config keys override config.json keys.

    EOS ids are those of config.json and generation_config.json together (generation's first),
    because either may be the one a chat model actually ends with."""
    root = Path(model_path)
    config_path = root / "config.json"
    if not root.is_dir():
        raise ModelMetadataError(f"model_path {str(root)!r} is not a directory")
    if not config_path.is_file():
        raise ModelMetadataError(
            f"model_path {str(root)!r} has no config.json (not a Hugging Face model directory)"
        )
    config = _read_json(config_path)
    config.update(parse_custom_config(custom_config))
    generation_path = root / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else {}

    num_layers = _required_int(config, "num_hidden_layers", config_path)
    num_heads = _required_int(config, "num_attention_heads", config_path)
    hidden_size = _required_int(config, "hidden_size", config_path)
    num_kv_heads = config.get("num_key_value_heads") or num_heads
    head_dim = config.get("head_dim") or hidden_size // num_heads
    if num_heads % num_kv_heads:
        raise ModelMetadataError(
            f"{config_path}: num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads "
            f"({num_kv_heads})"
        )

    eos: list[int] = []
    for token in _token_ids(generation.get("eos_token_id")) + _token_ids(config.get("eos_token_id")):
        if token not in eos:
            eos.append(token)
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    return ModelMetadata(
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "llama")),
        num_layers=num_layers,
        num_attention_heads=num_heads,
        num_kv_heads=int(num_kv_heads),
        head_dim=int(head_dim),
        hidden_size=hidden_size,
        intermediate_size=int(config.get("intermediate_size") or 4 * hidden_size),
        vocab_size=_required_int(config, "vocab_size", config_path),
        max_position_embeddings=_required_int(config, "max_position_embeddings", config_path),
        eos_token_ids=eos,
        bos_token_id=bos if isinstance(bos, int) else None,
        pad_token_id=pad if isinstance(pad, int) else None,
        # transformers 5 writes "dtype", older versions "torch_dtype".
        torch_dtype=config.get("dtype") or config.get("torch_dtype"),
        model_name=root.resolve().name,
    )
