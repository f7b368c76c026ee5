"""The one table of model dtypes on the worker: names the config accepts -> torch dtypes, and
what `auto` means on this device.

Byte sizes come from the torch dtype itself (`dtype.itemsize`); the scheduler, which has no torch,
sizes pools with infermesh_shared.config.kv_sizing.DTYPE_BYTES over the same names.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from infermesh_shared.config.kv_sizing import checkpoint_dtype

from infermesh_worker.errors import InvalidArgumentError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


# CPU features that make bf16 matmuls native (oneDNN uses them) rather than emulated through fp32.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
NATIVE_FP16_CPU_FLAGS = ("avx512_fp16", "amx_fp16")


def parse_dtype(name: str, device: torch.device | None = None, model_path: str | None = None) -> torch.dtype:
    """The torch dtype for a config name; `auto` takes the checkpoint's dtype (config.json, when
    `model_path` is given) where the device computes it natively, else fp32 (CUDA without bf16: fp16)."""
    if name.lower() == "auto":
        return auto_dtype(device or torch.device("cpu"), checkpoint_torch_dtype(model_path))
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"dtype {name!r} is not supported; use auto, bf16, fp16 or fp32") from None


def auto_dtype(device: torch.device, checkpoint: str | None = None) -> torch.dtype:
    """What `auto` means for a checkpoint stored in `checkpoint` (config.json's name; None: unknown,
    taken as a 16-bit checkpoint) on `device`."""
    wanted = DTYPES[checkpoint_dtype(checkpoint)] if checkpoint is not None else torch.bfloat16
    if wanted == torch.float32:
        return torch.float32
    if device.type == "cuda":
        if wanted == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return wanted
    flags = NATIVE_BF16_CPU_FLAGS if wanted == torch.bfloat16 else NATIVE_FP16_CPU_FLAGS
    return wanted if any(flag in cpu_flags() for flag in flags) else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """The config name of a torch dtype (bf16, fp16, fp32)."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def checkpoint_torch_dtype(model_path: str | None) -> str | None:
    """config.json's dtype (transformers 5) or torch_dtype (older); None when absent or unreadable."""
    if model_path is None:
        return None
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere, which means fp32)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
