"""Tiny random Hugging Face checkpoints of the Llama family, and `transformers` as the reference.

Shared test helper: every service's tests build their models here, so the worker, the scheduler
(metadata only) and the frontend see the same checkpoint layout (config.json, generation_config.json,
model.safetensors).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

ARCHS = ("llama", "mistral", "qwen2", "qwen3")

DEFAULT_VOCAB_SIZE = 256
# EOS id written into config.json / generation_config.json. Random weights rarely produce it, and the
# reference generation below disables EOS stopping anyway so token counts are deterministic.
EOS_TOKEN_ID = 2
BOS_TOKEN_ID = 1


def _make_config(
    arch: str,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    tie_word_embeddings: bool,
    dtype: torch.dtype,
    extra: dict | None,
):
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        rms_norm_eps=1e-6,
        dtype=dtype,
    )
    common.update(extra or {})
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "mistral":
        return transformers.MistralConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        # Qwen3 states head_dim explicitly; pick one different from hidden/heads so the worker is
        # forced to read it instead of deriving it.
        common.setdefault("head_dim", 2 * hidden_size // num_heads)
        return transformers.Qwen3Config(**common)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def build_random_model(
    arch: str,
    out_dir: Path,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tie_word_embeddings: bool = False,
    extra_config: dict | None = None,
) -> Path:
    """Writes a randomly initialised `arch` checkpoint (safetensors + config.json +
    generation_config.json) into `out_dir` and returns `out_dir`.

    `extra_config` is merged into the transformers config (e.g. rope scaling, attention_bias).
    No tokenizer is written (see write_test_tokenizer below).
    """
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _make_config(
        arch,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        dtype=dtype,
        extra=extra_config,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    # Default init (std 0.02) makes every logit nearly equal, so greedy ties would make comparisons
    # fragile; larger weights give well separated logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.2 if param.dim() > 1 else 0.05)
    model = model.to(dtype)
    model.save_pretrained(out_dir, safe_serialization=True)
    generation_config = {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID}
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    return out_dir


# --- tokenizer -------------------------------------------------------------------------------


def write_test_tokenizer(model_dir: Path, vocab_size: int | None = None) -> dict[str, int]:
    """Writes the demo byte-level BPE tokenizer (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json) into `model_dir`; returns {"bos_token_id", "eos_token_id", "vocab_size"}.

    `vocab_size` defaults to the model's (config.json); it must be >= 259 (3 specials + 256
    bytes) and <= the model's vocab_size. When config.json / generation_config.json exist, their
    bos/eos ids are set to the tokenizer's so EOS means the same thing to frontend and model.
    """
    from infermesh_cli.demo_tokenizer import build_demo_tokenizer, write_tokenizer_files

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    model_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    model_vocab = model_config.get("vocab_size")
    if vocab_size is None:
        if model_vocab is None:
            raise ValueError(f"give vocab_size: {config_path} does not exist or has no vocab_size")
        vocab_size = model_vocab
    if model_vocab is not None and vocab_size > model_vocab:
        raise ValueError(f"tokenizer vocab_size {vocab_size} exceeds the model's vocab_size {model_vocab}")
    tokenizer = build_demo_tokenizer(vocab_size)
    write_tokenizer_files(model_dir, tokenizer)
    ids = {
        "bos_token_id": tokenizer.token_to_id("<s>"),
        "eos_token_id": tokenizer.token_to_id("</s>"),
        "vocab_size": tokenizer.get_vocab_size(),
    }
    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            data["bos_token_id"] = ids["bos_token_id"]
            data["eos_token_id"] = ids["eos_token_id"]
            path.write_text(json.dumps(data, indent=2))
    return ids


# --- transformers reference -------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_reference(model_dir: Path):
    """The checkpoint loaded by transformers in fp32 (cached: tests ask for many prefixes)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model


def transformers_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` by transformers (fp32), exactly `max_new_tokens` tokens.

    EOS does not stop generation (eos_token_id is cleared and min_new_tokens = max_new_tokens), so
    the caller always gets max_new_tokens ids; a worker driven with ignore_eos behaves the same.
    """
    model = _load_reference(Path(model_dir).resolve())
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    return out[0, len(prompt_ids) :].tolist()


def transformers_last_logits(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """Logits (fp32, shape [vocab]) transformers gives for the token after `ids`."""
    model = _load_reference(Path(model_dir).resolve())
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits
    return logits[0, -1].float()
