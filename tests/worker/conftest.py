"""Fixtures for worker tests: tiny random checkpoints (built once per session) and a runner."""

from __future__ import annotations

import pytest
import torch
from infermesh_worker.model_runner import LoadSpec, ModelRunner

from tests.model_factory import ARCHS, build_random_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("worker-models")
    return {arch: build_random_model(arch, root / arch, seed=ARCHS.index(arch)) for arch in ARCHS}


def make_runner(model_dir, *, block_size: int = 4, num_blocks: int = 128, num_cpu_blocks: int = 0, **spec):
    runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 24, sampler_seed=1234)
    runner.load_model(LoadSpec(model_path=str(model_dir), block_size=block_size, **spec))
    runner.init_kv_cache(num_blocks, num_cpu_blocks)
    return runner
