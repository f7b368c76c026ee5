"""A worker's life around the steps: join the TP/PP group, load this rank's shard, size and
allocate the KV cache. The runner holds what these return; steps never come through here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from infermesh_shared.config.kv_sizing import blocks_for_budget, gpu_kv_budget_bytes

from infermesh_worker.checkpoint_reader import CheckpointReader
from infermesh_worker.dtypes import parse_dtype
from infermesh_worker.errors import InvalidArgumentError, ResourceExhaustedError
from infermesh_worker.kv_cache import KVCache, kv_block_bytes
from infermesh_worker.model_config import ModelConfig, load_model_config
from infermesh_worker.models.llama import LlamaFamilyModel
from infermesh_worker.parallel import ParallelContext, init_parallel, validate_parallel_shape
from infermesh_worker.sharding import plan_shard

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadSpec:
    """What LoadModel asks for (mirrors LoadModelRequest)."""

    model_path: str
    dtype: str = "fp32"
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    dist_init_method: str = ""
    dist_backend: str = "gloo"
    block_size: int = 16
    max_model_len: int = 0
    gpu_memory_utilization: float = 0.9
    config_overrides_json: str = ""
    enable_flash_attn: bool = True
    disable_sliding_window: bool = False


@dataclass(slots=True)
class LoadResult:
    max_num_blocks: int
    block_bytes: int
    dtype: str = ""  # the dtype loaded ("auto" resolved)


@dataclass(slots=True)
class LoadedShard:
    """This rank's loaded model and the group it belongs to."""

    config: ModelConfig
    model: LlamaFamilyModel
    parallel: ParallelContext
    block_size: int
    max_model_len: int
    block_bytes: int


def check_spec(spec: LoadSpec, device: torch.device) -> ModelConfig:
    """Everything that can be refused before joining the group, so every rank fails alike, at once."""
    dtype = parse_dtype(spec.dtype, device, spec.model_path)
    if spec.dtype.lower() == "auto":
        logger.info("dtype auto -> %s on %s", str(dtype).removeprefix("torch."), device)
    if spec.block_size < 1:
        raise InvalidArgumentError("block_size must be >= 1")
    if dtype == torch.float16 and device.type == "cpu":
        logger.warning("fp16 on CPU is slow; bf16 or fp32 are better choices there")
    validate_parallel_shape(spec.tp_size, spec.tp_rank, spec.pp_size, spec.pp_rank)
    if not Path(spec.model_path).is_dir():
        raise InvalidArgumentError(f"model_path {spec.model_path!r} is not a directory on this worker")
    config = load_model_config(spec.model_path, spec.config_overrides_json, spec.disable_sliding_window)
    plan_shard(config, ParallelContext(spec.tp_size, spec.tp_rank, spec.pp_size, spec.pp_rank))
    return config


def load_shard(
    spec: LoadSpec, config: ModelConfig, device: torch.device, dist_timeout_s: float
) -> LoadedShard:
    """Joins the process group and loads this rank's layers; leaves the group again on failure."""
    dtype = parse_dtype(spec.dtype, device, spec.model_path)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each rank to the current device
    parallel = init_parallel(
        spec.tp_size,
        spec.tp_rank,
        spec.pp_size,
        spec.pp_rank,
        init_method=spec.dist_init_method,
        backend=spec.dist_backend,
        timeout_s=dist_timeout_s,
    )
    try:
        shard = plan_shard(config, parallel)
        max_model_len = spec.max_model_len or config.max_position_embeddings
        max_positions = max(max_model_len, config.max_position_embeddings)
        model = LlamaFamilyModel(config, shard, parallel, max_positions, dtype, device)
        reader = CheckpointReader(spec.model_path, dtype, device)
        try:
            model.load(reader)
        except RuntimeError as exc:
            raise InvalidArgumentError(
                f"the checkpoint in {spec.model_path!r} does not match its config.json: {exc}"
            ) from exc
        finally:
            reader.close()
    except BaseException:
        parallel.destroy()  # a later LoadModel must be able to join a new group
        raise
    model.eval()
    block_bytes = kv_block_bytes(
        spec.block_size, model.num_local_layers, shard.num_kv_heads, config.head_dim, dtype.itemsize
    )
    return LoadedShard(config, model, parallel, spec.block_size, max_model_len, block_bytes)


def blocks_that_fit(
    device: torch.device, block_bytes: int, kv_cache_memory_bytes: int, gpu_memory_utilization: float
) -> int:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = gpu_kv_budget_bytes(total, total - free, gpu_memory_utilization)
        if kv_cache_memory_bytes:
            budget = min(budget, kv_cache_memory_bytes)
    else:
        budget = kv_cache_memory_bytes
    return blocks_for_budget(budget, block_bytes)


def allocate_kv_cache(
    shard: LoadedShard, num_blocks: int, num_cpu_blocks: int, device: torch.device
) -> KVCache:
    if num_blocks < 1:
        raise InvalidArgumentError("num_blocks must be >= 1")
    try:
        return KVCache(
            shard.model.num_local_layers,
            num_blocks,
            num_cpu_blocks,
            shard.block_size,
            shard.model.shard.num_kv_heads,
            shard.config.head_dim,
            shard.model.dtype,
            device,
        )
    except (RuntimeError, MemoryError) as exc:
        raise ResourceExhaustedError(
            f"cannot allocate {num_blocks} KV blocks of {shard.block_bytes} bytes "
            f"(+{num_cpu_blocks} CPU blocks): {exc}"
        ) from exc
