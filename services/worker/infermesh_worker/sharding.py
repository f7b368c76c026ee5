"""How a model's heads, MLP columns and layers are divided among tensor and pipeline ranks."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh_worker.errors import InvalidArgumentError
from infermesh_worker.model_config import ModelConfig
from infermesh_worker.parallel import ParallelContext


@dataclass(slots=True)
class ShardPlan:
    """This rank's slice of the model."""

    num_heads: int  # query heads on this rank
    head_start: int  # first global query head
    num_kv_heads: int  # KV heads on this rank
    kv_head_start: int  # first global KV head
    intermediate_size: int  # MLP columns on this rank
    intermediate_start: int
    layer_start: int  # global index of this stage's first layer
    layer_end: int


def plan_shard(config: ModelConfig, parallel: ParallelContext) -> ShardPlan:
    """Splits heads across tensor ranks and layers across stages, or says why it cannot.

    KV heads: with num_kv_heads >= tp_size each rank holds num_kv_heads / tp_size of them; with fewer
    KV heads than ranks each KV head is replicated on tp_size / num_kv_heads ranks (vLLM's choice).
    """
    tp, rank = parallel.tp_size, parallel.tp_rank
    if config.num_heads % tp:
        raise InvalidArgumentError(
            f"num_attention_heads={config.num_heads} is not divisible by tp_size={tp}; "
            "choose a tp_size that divides the number of attention heads"
        )
    if config.num_kv_heads >= tp:
        if config.num_kv_heads % tp:
            raise InvalidArgumentError(
                f"num_key_value_heads={config.num_kv_heads} is not divisible by tp_size={tp}; "
                "choose a tp_size that divides it (or that it divides)"
            )
        kv_heads = config.num_kv_heads // tp
        kv_start = rank * kv_heads
    else:
        if tp % config.num_kv_heads:
            raise InvalidArgumentError(
                f"tp_size={tp} is not a multiple of num_key_value_heads={config.num_kv_heads}; "
                "KV heads can only be replicated evenly"
            )
        kv_heads = 1
        kv_start = rank // (tp // config.num_kv_heads)
    if config.intermediate_size % tp:
        raise InvalidArgumentError(
            f"intermediate_size={config.intermediate_size} is not divisible by tp_size={tp}"
        )
    pp = parallel.pp_size
    if config.num_layers < pp:
        raise InvalidArgumentError(f"pp_size={pp} exceeds num_hidden_layers={config.num_layers}")
    start, end = layer_range(config.num_layers, pp, parallel.pp_rank)
    heads = config.num_heads // tp
    inter = config.intermediate_size // tp
    return ShardPlan(
        num_heads=heads,
        head_start=rank * heads,
        num_kv_heads=kv_heads,
        kv_head_start=kv_start,
        intermediate_size=inter,
        intermediate_start=rank * inter,
        layer_start=start,
        layer_end=end,
    )


def layer_range(num_layers: int, pp_size: int, pp_rank: int) -> tuple[int, int]:
    """Contiguous [start, end) of layers for stage pp_rank; earlier stages take the remainder."""
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return start, start + base + (1 if pp_rank < extra else 0)
