"""The built-in demo model: a small Llama checkpoint with deterministic weights and a real tokenizer.

`infermesh up` without `--model-path` serves it, so a fresh machine with no network has something
to talk to. It is written once, in Hugging Face format (config.json, generation_config.json,
model.safetensors, tokenizer files), to a cache directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when weights are written: `infermesh --help` stays fast
    import torch

# Bump when the recipe changes so an old cached copy is not served under the new name.
DEMO_MODEL_NAME = "infermesh-demo-llama-v1"
DEMO_VOCAB_SIZE = 2048
DEMO_ARCH = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}
WEIGHT_SEED = 20261124


def default_cache_dir() -> Path:
    """Where generated models live: $INFERMESH_CACHE, else ~/.cache/infermesh."""
    return Path(os.environ.get("INFERMESH_CACHE", Path.home() / ".cache" / "infermesh"))


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Returns the demo model's directory, creating it on first use."""
    target = (cache_dir or default_cache_dir()) / DEMO_MODEL_NAME
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename, so a crash never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        write_llama_checkpoint(staging, vocab_size=DEMO_VOCAB_SIZE, seed=WEIGHT_SEED, **DEMO_ARCH)
        staging.rename(target)
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_llama_checkpoint(
    out_dir: Path,
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int,
    seed: int,
) -> Path:
    """Writes a Llama checkpoint with seeded random weights and a byte-level BPE tokenizer."""
    from safetensors.torch import save_file

    from infermesh_cli.demo_tokenizer import build_demo_tokenizer, write_tokenizer_files

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_demo_tokenizer(vocab_size)
    write_tokenizer_files(out_dir, tokenizer)
    bos_id, eos_id = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": hidden_size // num_attention_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": bos_id, "eos_token_id": [eos_id]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file(_llama_weights(config, seed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def _llama_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    head_dim = config["head_dim"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    weights = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        weights[f"{prefix}.self_attn.q_proj.weight"] = normal(q_out, hidden)
        weights[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_out, hidden)
        weights[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_out, hidden)
        weights[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, q_out)
        weights[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[f"{prefix}.mlp.up_proj.weight"] = normal(inter, hidden)
        weights[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, inter)
        weights[f"{prefix}.input_layernorm.weight"] = torch.ones(hidden)
        weights[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(hidden)
    weights["model.norm.weight"] = torch.ones(hidden)
    weights["lm_head.weight"] = normal(vocab, hidden)
    return weights
