"""Where this rank sits in its tensor/pipeline group, and the few collectives the model needs.

All ranks of a worker group are in ONE torch.distributed process group (rank = pp_rank*tp_size +
tp_rank); tensor-parallel subgroups are created on every rank in the same order, as
torch.distributed requires. With a group of one, no process group is created and every collective
is the identity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from infermesh_worker.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ParallelContext:
    """This rank's coordinates and its process groups."""

    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    tp_group: object | None = None
    initialized_here: bool = False
    _all_tp_groups: list = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def rank(self) -> int:
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_sampling_rank(self) -> bool:
        """The one rank that samples and reports tokens: last stage, tensor rank 0."""
        return self.is_last_stage and self.tp_rank == 0

    @property
    def sampling_rank(self) -> int:
        return (self.pp_size - 1) * self.tp_size

    def peer_in_stage(self, pp_rank: int) -> int:
        """Global rank of the same tensor rank in stage `pp_rank`."""
        return pp_rank * self.tp_size + self.tp_rank

    # --- collectives --------------------------------------------------------------------------

    def tp_all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return tensor
        dist.all_reduce(tensor, group=self.tp_group)
        return tensor

    def tp_all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.tp_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=-1)

    def send_to_next_stage(self, tensor: torch.Tensor) -> None:
        dist.send(tensor.contiguous(), dst=self.peer_in_stage(self.pp_rank + 1))

    def recv_from_previous_stage(self, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(tensor, src=self.peer_in_stage(self.pp_rank - 1))
        return tensor

    def broadcast_from_sampling_rank(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        dist.broadcast(tensor, src=self.sampling_rank)
        return tensor

    def destroy(self) -> None:
        if self.initialized_here and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a broken group may fail to tear down; it is gone anyway
                logger.exception("destroying the process group failed")
        self.initialized_here = False


def validate_parallel_shape(tp_size: int, tp_rank: int, pp_size: int, pp_rank: int) -> None:
    if tp_size < 1 or pp_size < 1:
        raise InvalidArgumentError(f"tp_size ({tp_size}) and pp_size ({pp_size}) must be >= 1")
    if not 0 <= tp_rank < tp_size:
        raise InvalidArgumentError(f"tp_rank {tp_rank} is outside [0, tp_size={tp_size})")
    if not 0 <= pp_rank < pp_size:
        raise InvalidArgumentError(f"pp_rank {pp_rank} is outside [0, pp_size={pp_size})")


def init_parallel(
    tp_size: int,
    tp_rank: int,
    pp_size: int,
    pp_rank: int,
    *,
    init_method: str,
    backend: str,
    timeout_s: float = 60.0,
) -> ParallelContext:
    """Joins the worker group's process group (blocks until every rank has joined, at most
    timeout_s; the same bound applies to every collective afterwards)."""
    validate_parallel_shape(tp_size, tp_rank, pp_size, pp_rank)
    ctx = ParallelContext(tp_size=tp_size, tp_rank=tp_rank, pp_size=pp_size, pp_rank=pp_rank)
    if ctx.world_size == 1:
        return ctx
    if not init_method:
        raise InvalidArgumentError(
            f"dist_init_method is empty but the group has {ctx.world_size} ranks; "
            "pass e.g. tcp://HOST:PORT reachable by every rank"
        )
    if backend not in ("gloo", "nccl"):
        raise InvalidArgumentError(f"dist_backend {backend!r} is not supported; use gloo or nccl")
    if dist.is_initialized():
        raise InvalidArgumentError("this worker already belongs to a process group; Reset it or restart it")
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    ctx.initialized_here = True
    # new_group is collective over the whole world: every rank creates every TP group in order.
    for stage in range(pp_size):
        ranks = [stage * tp_size + r for r in range(tp_size)]
        group = dist.new_group(ranks) if tp_size > 1 else None
        ctx._all_tp_groups.append(group)
        if stage == pp_rank:
            ctx.tp_group = group
    return ctx
