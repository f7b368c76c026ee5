"""The parts of a Hugging Face config.json that shape the model, read and checked once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from infermesh_worker.errors import InvalidArgumentError

# architectures[0] in config.json -> (qkv bias default, per-head Q/K RMSNorm)
_ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "LlamaForCausalLM": (False, False),
    "MistralForCausalLM": (False, False),
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
}

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(slots=True)
class RopeConfig:
    """Rotary embedding parameters (theta and optional scaling)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(slots=True)
class ModelConfig:
    """Shape and options of a Llama-family decoder as config.json states them."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    rope: RopeConfig
    # Keys attend only to the last `sliding_window` positions (Mistral); None means full attention.
    sliding_window: int | None = None
    raw: dict = field(default_factory=dict)


def _rope_config(raw: dict) -> RopeConfig:
    # transformers >= 5 writes rope_parameters (with rope_theta inside); older files have
    # rope_theta at the top level and an optional rope_scaling dict.
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    params.update({k: v for k, v in scaling.items() if k not in params})
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise InvalidArgumentError(
            f"rope scaling type {rope_type!r} in config.json is not supported by this worker; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    rope = RopeConfig(theta=float(theta), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        if "factor" not in params:
            raise InvalidArgumentError(f"rope scaling type {rope_type!r} needs a 'factor' in config.json")
        rope.factor = float(params["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in params:
                raise InvalidArgumentError(f"llama3 rope scaling needs {key!r} in config.json")
        rope.low_freq_factor = float(params["low_freq_factor"])
        rope.high_freq_factor = float(params["high_freq_factor"])
        rope.original_max_position_embeddings = int(params["original_max_position_embeddings"])
    return rope


def _sliding_window(raw: dict, architecture: str, disable: bool) -> int | None:
    if disable:
        return None  # the scheduler's disable_sliding_window: full attention whatever config.json says
    if architecture == "MistralForCausalLM":
        window = raw.get("sliding_window")
        return int(window) if window else None
    if raw.get("use_sliding_window"):
        raise InvalidArgumentError(
            f"{architecture} with use_sliding_window=true is not supported; set it to false in config.json "
            "or set disable_sliding_window: true on the scheduler (full attention)"
        )
    return None


def parse_model_config(raw: dict, disable_sliding_window: bool = False) -> ModelConfig:
    """Builds a ModelConfig from a config.json dict; raises InvalidArgumentError on what we cannot run.
    disable_sliding_window drops the checkpoint's window: every layer attends to the whole context."""
    architectures = raw.get("architectures") or []
    if not architectures or architectures[0] not in _ARCHITECTURES:
        raise InvalidArgumentError(
            f"config.json architectures={architectures!r} is not supported; "
            f"supported: {', '.join(_ARCHITECTURES)}"
        )
    architecture = architectures[0]
    qkv_bias_default, qk_norm = _ARCHITECTURES[architecture]
    hidden_act = raw.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise InvalidArgumentError(f"hidden_act={hidden_act!r} is not supported; only 'silu'")
    try:
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        head_dim = raw.get("head_dim") or hidden_size // num_heads
        attention_bias = bool(raw.get("attention_bias", qkv_bias_default))
        return ModelConfig(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            # Qwen2 always has a Q/K/V bias and never an o_proj bias; Llama/Qwen3 follow attention_bias.
            qkv_bias=True if architecture == "Qwen2ForCausalLM" else attention_bias,
            o_bias=False if architecture == "Qwen2ForCausalLM" else attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=qk_norm,
            rope=_rope_config(raw),
            sliding_window=_sliding_window(raw, architecture, disable_sliding_window),
            raw=raw,
        )
    except KeyError as exc:
        raise InvalidArgumentError(f"config.json lacks required key {exc.args[0]!r}") from exc


# The only config.json keys LoadModel may change: how long a context the model is run for (what
# vLLM users pass as hf_overrides). Every other key describes the checkpoint's architecture
# (layers, widths, heads, vocabulary, norms): overriding one would serve a different, e.g.
# truncated, model from the same weights while health stays SERVING.
OVERRIDABLE_KEYS = frozenset({"max_position_embeddings", "rope_scaling"})


def checked_overrides(raw: dict, overrides_json: str) -> dict:
    """The JSON object `overrides_json`, refused (INVALID_ARGUMENT) when it changes a key of
    `raw` (the checkpoint's config.json) outside OVERRIDABLE_KEYS."""
    if not overrides_json:
        return {}
    try:
        overrides = json.loads(overrides_json)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"config_overrides_json is not valid JSON: {exc}") from exc
    if not isinstance(overrides, dict):
        raise InvalidArgumentError("config_overrides_json must be a JSON object")
    changed = sorted(
        k for k, v in overrides.items() if k not in OVERRIDABLE_KEYS and (k not in raw or raw[k] != v)
    )
    if changed:
        raise InvalidArgumentError(
            f"config_overrides_json may not change {', '.join(map(repr, changed))}: a worker serves the "
            f"architecture of the checkpoint's config.json; only {', '.join(sorted(OVERRIDABLE_KEYS))} "
            "may be overridden"
        )
    return overrides


def read_config_json(model_path: str | Path) -> dict:
    path = Path(model_path) / "config.json"
    if not path.is_file():
        raise InvalidArgumentError(f"no config.json in model_path {str(model_path)!r}")
    return json.loads(path.read_text())


def load_model_config(
    model_path: str | Path, overrides_json: str = "", disable_sliding_window: bool = False
) -> ModelConfig:
    """Reads `model_path`/config.json, merges the JSON object `overrides_json` over it (see
    checked_overrides), and parses it."""
    raw = read_config_json(model_path)
    raw.update(checked_overrides(raw, overrides_json))
    return parse_model_config(raw, disable_sliding_window)
