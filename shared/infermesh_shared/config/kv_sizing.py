"""The one KV-block size formula the scheduler and the workers share (seed 000's arithmetic)."""

from __future__ import annotations

import math

from .model_metadata import ModelMetadata

# `auto` is resolved by each worker for its device (the checkpoint's dtype where native, else fp32); sized
# here as the larger choice, so a byte budget (swap space) is never exceeded.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "bfloat16": 2, "float16": 2, "float32": 4, "auto": 4}
GIB = 1 << 30


# config.json's torch dtype names -> the config spelling.
_CHECKPOINT_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "half": "fp16",
    "float": "fp32",
}


def checkpoint_dtype(torch_dtype: str | None) -> str:
    """The config spelling of a checkpoint's dtype (config.json `dtype`/`torch_dtype`); fp32 when
    absent or unknown, as transformers loads such a checkpoint."""
    if torch_dtype is None:
        return "fp32"
    return _CHECKPOINT_DTYPES.get(str(torch_dtype).removeprefix("torch."), "fp32")


def resolve_dtype(dtype: str, torch_dtype: str | None, native_half: frozenset[str] | None = None) -> str:
    """`dtype` with "auto" replaced: the checkpoint's dtype, or fp32 when the device has no native
    support for it (`native_half`: the 16-bit dtypes the device computes natively; None = all)."""
    if dtype != "auto":
        return dtype
    wanted = checkpoint_dtype(torch_dtype)
    if wanted != "fp32" and native_half is not None and wanted not in native_half:
        return "fp32"
    return wanted


def dtype_size(dtype: str) -> int:
    """Bytes per element of a config dtype (bf16/fp16/fp32, or the torch spelling)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of auto, bf16, fp16, fp32") from None


def kv_heads_per_rank(metadata: ModelMetadata, tp_size: int = 1) -> int:
    """KV heads one tensor-parallel rank holds (replicated when there are fewer heads than ranks)."""
    return max(1, metadata.num_kv_heads // tp_size)


def layers_per_stage(metadata: ModelMetadata, pp_size: int = 1) -> int:
    """Layers of the largest pipeline stage (stages differ by at most one layer)."""
    return math.ceil(metadata.num_layers / pp_size)


def kv_block_bytes(
    metadata: ModelMetadata, block_size: int, dtype: str, tp_size: int = 1, pp_size: int = 1
) -> int:
    """Bytes one KV block takes: block_size * 2 (K and V) * layers * kv_heads * head_dim * dtype_size.

    With tp_size/pp_size > 1 this is what one worker holds of the block (its KV heads, its
    stage's layers), which is what a worker's memory budget must be divided by."""
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0 (got {block_size})")
    return (
        block_size
        * 2
        * layers_per_stage(metadata, pp_size)
        * kv_heads_per_rank(metadata, tp_size)
        * metadata.head_dim
        * dtype_size(dtype)
    )


def blocks_for_budget(budget_bytes: int, block_bytes: int) -> int:
    """How many whole blocks of block_bytes fit in budget_bytes."""
    if block_bytes <= 0:
        raise ValueError(f"block_bytes must be > 0 (got {block_bytes})")
    return max(0, int(budget_bytes) // block_bytes)


def gpu_kv_budget_bytes(total_bytes: int, used_bytes: int, gpu_memory_utilization: float) -> int:
    """KV budget on a GPU: the share of device memory we may use minus what is already used
    (weights, activations, other processes), as vLLM computes it."""
    return max(0, int(total_bytes * gpu_memory_utilization) - int(used_bytes))
