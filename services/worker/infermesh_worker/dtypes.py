"""The one table of model dtypes on the worker: names the config accepts -> torch dtypes.

Byte sizes come from the torch dtype itself (`dtype.itemsize`); the scheduler, which has no torch,
sizes pools with infermesh_shared.config.kv_sizing.DTYPE_BYTES over the same names.
"""

from __future__ import annotations

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


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"dtype {name!r} is not supported; use bf16, fp16 or fp32") from None
