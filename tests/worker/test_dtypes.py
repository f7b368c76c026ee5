"""`dtype: auto` picks bf16 only where the CPU computes it natively, fp32 otherwise."""

from __future__ import annotations

import pytest
import torch
from infermesh_worker import dtypes
from infermesh_worker.errors import InvalidArgumentError

from tests.worker.conftest import make_runner


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, torch.float32),
        ({"avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"amx_tile", "amx_bf16"}, torch.bfloat16),
        (set(), torch.float32),
    ],
)
def test_auto_on_cpu_follows_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(flags))
    assert dtypes.parse_dtype("auto", torch.device("cpu")) == expected
    assert dtypes.parse_dtype("AUTO", torch.device("cpu")) == expected


def test_names_and_refusal():
    assert dtypes.parse_dtype("bfloat16") == torch.bfloat16
    assert dtypes.parse_dtype("fp32") == torch.float32
    with pytest.raises(InvalidArgumentError, match="use auto, bf16, fp16 or fp32"):
        dtypes.parse_dtype("int8")


def test_runner_loads_auto_as_this_machines_choice(model_dirs):
    runner = make_runner(model_dirs["llama"], dtype="auto")
    stored = dtypes.checkpoint_torch_dtype(str(model_dirs["llama"]))
    assert runner.kv_cache.device_cache.dtype == dtypes.auto_dtype(torch.device("cpu"), stored)
    assert runner.model.dtype == runner.kv_cache.device_cache.dtype
