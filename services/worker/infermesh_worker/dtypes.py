"""The one table of model dtypes on the worker: names the config accepts -> torch dtypes, and
what `auto` means on this device.

Byte sizes come from the torch dtype itself (`dtype.itemsize`); the scheduler, which has no torch,
sizes pools with infermesh_shared.config.kv_sizing.DTYPE_BYTES over the same names.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

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


def parse_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The torch dtype for a config name; `auto` picks bf16 where the device computes it natively
    (CUDA with bf16 support, a CPU with AVX512-BF16 or AMX), else fp16 on CUDA and fp32 on CPU."""
    if name.lower() == "auto":
        return auto_dtype(device or torch.device("cpu"))
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"dtype {name!r} is not supported; use auto, bf16, fp16 or fp32") from None


def auto_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS) else torch.float32


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
