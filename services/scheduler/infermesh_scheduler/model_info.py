"""The served model's description, from config.json metadata and the scheduler config."""

from __future__ import annotations

import os

from infermesh.v1 import common_pb2
from infermesh_shared.config.model_metadata import ModelMetadata


def model_name(model_path: str) -> str:
    """The name the model is served under: its directory's name."""
    return os.path.basename(os.path.normpath(model_path))


def build_model_info(
    model_path: str,
    metadata: ModelMetadata,
    max_model_len: int,
    block_size: int,
    total_blocks: int,
    tp_size: int,
    pp_size: int,
    dtype: str,
) -> common_pb2.ModelInfo:
    """ModelInfo as GetModelInfo serves it."""
    return common_pb2.ModelInfo(
        model_name=model_name(model_path),
        architecture=metadata.architecture,
        vocab_size=metadata.vocab_size,
        max_model_len=max_model_len,
        eos_token_ids=metadata.eos_token_ids,
        block_size=block_size,
        total_blocks=total_blocks,
        tp_size=tp_size,
        pp_size=pp_size,
        dtype=dtype,
    )
