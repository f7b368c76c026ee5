"""Model metadata from a real config.json / generation_config.json, and the KV block arithmetic."""

from __future__ import annotations

import json

import pytest
from infermesh_shared.config import ModelMetadataError, blocks_for_budget, kv_block_bytes, read_model_metadata
from infermesh_shared.config.kv_sizing import gpu_kv_budget_bytes

from .conftest import LLAMA3_8B_CONFIG, write_model_dir


def test_llama_metadata_with_generation_eos_list(llama_dir):
    meta = read_model_metadata(llama_dir)
    assert meta.architecture == "LlamaForCausalLM"
    assert meta.model_type == "llama"
    assert meta.num_layers == 32
    assert meta.num_attention_heads == 32
    assert meta.num_kv_heads == 8
    assert meta.head_dim == 128  # hidden_size / num_attention_heads
    assert meta.hidden_size == 4096
    assert meta.intermediate_size == 14336
    assert meta.vocab_size == 128256
    assert meta.max_position_embeddings == 8192
    assert meta.eos_token_ids == [
        128001,
        128008,
        128009,
    ]  # generation_config's list, config's id already in it
    assert meta.bos_token_id == 128000
    assert meta.torch_dtype == "bfloat16"
    assert meta.model_name == "llama3-8b"


def test_eos_ids_from_both_files_without_duplicates(tmp_path):
    root = write_model_dir(tmp_path / "m", {**LLAMA3_8B_CONFIG, "eos_token_id": 2}, {"eos_token_id": [7, 2]})
    assert read_model_metadata(root).eos_token_ids == [7, 2]


def test_without_generation_config_and_with_explicit_head_dim(tmp_path):
    config = {**LLAMA3_8B_CONFIG, "head_dim": 256, "num_key_value_heads": None, "dtype": "float16"}
    del config["torch_dtype"]
    meta = read_model_metadata(write_model_dir(tmp_path / "q", config))
    assert meta.head_dim == 256
    assert meta.num_kv_heads == 32  # absent -> multi-head attention
    assert meta.eos_token_ids == [128001]
    assert meta.torch_dtype == "float16"  # transformers 5 spelling


def test_custom_config_overrides_config_json(llama_dir):
    meta = read_model_metadata(llama_dir, '{"max_position_embeddings": 2048, "num_hidden_layers": 2}')
    assert meta.max_position_embeddings == 2048
    assert meta.num_layers == 2
    assert read_model_metadata(llama_dir, {"vocab_size": 1000}).vocab_size == 1000


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "is not a directory"),
        (lambda root: root.mkdir(), "has no config.json"),
        (lambda root: (root.mkdir(), (root / "config.json").write_text("{not json")), "is not valid JSON"),
        (
            lambda root: (root.mkdir(), (root / "config.json").write_text(json.dumps({"hidden_size": 8}))),
            "must give num_hidden_layers as a positive integer (got None)",
        ),
    ],
)
def test_unreadable_model_dirs_say_what_is_wrong(tmp_path, setup, message):
    root = tmp_path / "model"
    setup(root)
    with pytest.raises(ModelMetadataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_model_metadata(root)


def test_kv_block_bytes_is_seed_000_arithmetic(llama_dir):
    meta = read_model_metadata(llama_dir)
    # block_size * 2 * num_layers * num_kv_heads * head_dim * dtype_size
    assert kv_block_bytes(meta, 16, "bf16") == 16 * 2 * 32 * 8 * 128 * 2 == 2 * 1024 * 1024
    assert kv_block_bytes(meta, 16, "fp32") == 4 * 1024 * 1024
    assert kv_block_bytes(meta, 32, "fp16") == 4 * 1024 * 1024


def test_kv_block_bytes_per_rank_under_tp_and_pp(llama_dir):
    meta = read_model_metadata(llama_dir)
    whole = kv_block_bytes(meta, 16, "bf16")
    assert kv_block_bytes(meta, 16, "bf16", tp_size=4) == whole // 4  # 2 of 8 KV heads per rank
    assert kv_block_bytes(meta, 16, "bf16", pp_size=3) == whole // 32 * 11  # largest stage: 11 of 32 layers
    assert kv_block_bytes(meta, 16, "bf16", tp_size=16) == whole // 8  # KV heads replicated: 1 per rank


def test_blocks_for_a_cpu_budget(llama_dir):
    meta = read_model_metadata(llama_dir)
    block = kv_block_bytes(meta, 16, "bf16")
    assert blocks_for_budget(512 * 1024 * 1024, block) == 256
    assert blocks_for_budget(block - 1, block) == 0
    assert blocks_for_budget(10 * block + 5, block) == 10


def test_gpu_budget_is_utilisation_minus_used():
    assert gpu_kv_budget_bytes(80 * 2**30, 20 * 2**30, 0.9) == 52 * 2**30
    assert gpu_kv_budget_bytes(10, 20, 0.5) == 0


def test_bad_arguments_are_refused(llama_dir):
    meta = read_model_metadata(llama_dir)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        kv_block_bytes(meta, 16, "int8")
    with pytest.raises(ValueError, match="block_size must be > 0"):
        kv_block_bytes(meta, 0, "bf16")
