"""Runs step plans: applies the plan through the sequence table, batches every scheduled token into
one forward, and samples for sequences that reached the end of their known tokens.

Loading, group membership and KV sizing live in lifecycle.py; plan checks and per-sequence
bookkeeping in plan_state.py; the plan arrives as plain records (step_plan.py), decoded at the
servicer."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from infermesh_shared.config.model_metadata import read_model_metadata
from torch.nn.attention import SDPBackend, sdpa_kernel

from infermesh_worker.attention_metadata import ScheduledChunk, build_attention_metadata
from infermesh_worker.dtypes import dtype_name
from infermesh_worker.errors import FailedPreconditionError
from infermesh_worker.kernels.paged_attention_ext import load_paged_attention
from infermesh_worker.kv_cache import KVCache
from infermesh_worker.layers.logits_adjust import AdjustRow, LogitsAdjustment, adjust_logits
from infermesh_worker.layers.sampler import Sampler, SamplingRow
from infermesh_worker.lifecycle import (
    LoadedShard,
    LoadResult,
    LoadSpec,
    allocate_kv_cache,
    blocks_that_fit,
    check_spec,
    load_shard,
)
from infermesh_worker.model_config import ModelConfig
from infermesh_worker.models.llama import LlamaFamilyModel
from infermesh_worker.parallel import ParallelContext
from infermesh_worker.plan_state import PlanLimits, SequenceTable
from infermesh_worker.sequence_state import SequenceState
from infermesh_worker.step_plan import SampledToken, StepPlan, StepResult

logger = logging.getLogger(__name__)

__all__ = ["LoadResult", "LoadSpec", "ModelRunner", "attention_backends"]


class ModelRunner:
    """One rank's model, KV cache, sampler and sequence table. Not thread-safe: call from one thread."""

    def __init__(
        self,
        device: torch.device,
        kv_cache_memory_bytes: int,
        sampler_seed: int | None = None,
        dist_timeout_s: float = 60.0,
    ):
        self.device = device
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.dist_timeout_s = dist_timeout_s
        self.sampler = Sampler(device, sampler_seed)
        self.parallel = ParallelContext()
        self.shard: LoadedShard | None = None
        self.kv_cache: KVCache | None = None
        self.table = SequenceTable()
        self.broken_reason = ""
        self._attention_backends: Callable[[], AbstractContextManager] = contextlib.nullcontext
        self._paged_kernel: Callable | None = None
        self._eos_token_ids: list[int] = []

    @property
    def model(self) -> LlamaFamilyModel | None:
        return self.shard.model if self.shard else None

    @property
    def config(self) -> ModelConfig | None:
        return self.shard.config if self.shard else None

    @property
    def sequences(self) -> dict[int, SequenceState]:
        return self.table.sequences

    # --- lifecycle (lifecycle.py does the work) ----------------------------------------------

    def load_model(self, spec: LoadSpec) -> LoadResult:
        """Joins the process group, loads this rank's shard and says how many KV blocks fit."""
        config = check_spec(spec, self.device)
        self._attention_backends = attention_backends(self.device, spec.enable_flash_attn)
        # On CPU the in-place kernel replaces the per-step gather; CUDA keeps SDPA's kernels.
        self._paged_kernel = load_paged_attention() if self.device.type == "cpu" else None
        self.shutdown()
        shard = load_shard(spec, config, self.device, self.dist_timeout_s)
        self.shard = shard
        self.parallel = shard.parallel
        self.broken_reason = ""
        fit = blocks_that_fit(
            self.device, shard.block_bytes, self.kv_cache_memory_bytes, spec.gpu_memory_utilization
        )
        # min_tokens keeps these from ending a sequence early (generation_config.json's and config.json's).
        self._eos_token_ids = read_model_metadata(
            spec.model_path, spec.config_overrides_json or None
        ).eos_token_ids
        return LoadResult(
            max_num_blocks=fit, block_bytes=shard.block_bytes, dtype=dtype_name(shard.model.dtype)
        )

    def init_kv_cache(self, num_blocks: int, num_cpu_blocks: int) -> None:
        if self.shard is None:
            raise FailedPreconditionError("InitKVCache before LoadModel: load the model first")
        self.kv_cache = allocate_kv_cache(self.shard, num_blocks, num_cpu_blocks, self.device)
        self.table.clear()

    def _abandon_group(self, reason: str) -> None:
        """Leaves a process group after a failed step. Peers blocked in a collective with this rank
        then fail at once (their connections close) instead of waiting for the collective timeout,
        so the whole group is quickly ready for the scheduler's Reset + LoadModel."""
        logger.error("%s; leaving the process group, LoadModel must be called again", reason)
        self.shutdown()
        self.broken_reason = reason

    def reset(self) -> None:
        """Forgets every sequence; the model and KV cache stay."""
        self.table.clear()

    def shutdown(self) -> None:
        self.table.clear()
        self.kv_cache = None
        self.shard = None
        self.parallel.destroy()
        self.parallel = ParallelContext()

    # --- one step ----------------------------------------------------------------------------

    def execute(self, plan: StepPlan) -> StepResult:
        if self.shard is None and self.broken_reason:
            raise FailedPreconditionError(
                f"this worker left its process group after a failed step ({self.broken_reason}); "
                "call LoadModel again to rebuild the group"
            )
        if self.shard is None:
            raise FailedPreconditionError("Execute before LoadModel: load the model first")
        if self.kv_cache is None:
            raise FailedPreconditionError("Execute before InitKVCache: allocate the KV cache first")
        start = time.perf_counter()
        try:
            self.table.validate(plan, self._limits())
            self.kv_cache.swap_out(plan.swap_out)
            self.kv_cache.swap_in(plan.swap_in)
            self.kv_cache.copy(plan.copy)
            scheduled = self.table.apply(plan)
            tokens = self._run(scheduled, plan.tokens_in_later_plans) if scheduled else []
        except Exception as exc:
            if self.parallel.world_size > 1:
                # Peers may already wait in a collective for this rank (e.g. if its state diverged);
                # leaving the group releases them, and the scheduler rebuilds a group whose step failed.
                self._abandon_group(f"step {plan.step_id} failed: {type(exc).__name__}: {exc}")
            raise
        elapsed_us = int((time.perf_counter() - start) * 1e6)
        return StepResult(step_id=plan.step_id, tokens=tokens, compute_time_us=elapsed_us)

    def _limits(self) -> PlanLimits:
        return PlanLimits(
            num_blocks=self.kv_cache.num_blocks,
            num_cpu_blocks=self.kv_cache.num_cpu_blocks,
            block_size=self.shard.block_size,
            vocab_size=self.shard.config.vocab_size,
            max_model_len=self.shard.max_model_len,
        )

    @torch.inference_mode()
    def _run(
        self, scheduled: list[tuple[SequenceState, int]], tokens_in_later_plans: bool
    ) -> list[SampledToken]:
        input_ids: list[int] = []
        positions: list[int] = []
        chunks: list[ScheduledChunk] = []
        sample_rows: list[int] = []
        samplers: list[SequenceState] = []
        for state, count in scheduled:
            begin = state.num_computed_tokens
            input_ids.extend(state.token_ids[begin : begin + count])
            positions.extend(range(begin, begin + count))
            chunks.append(ScheduledChunk(state.block_table, begin, count))
            if begin + count == len(state.token_ids):
                sample_rows.append(len(input_ids) - 1)
                samplers.append(state)
        meta = build_attention_metadata(
            chunks, self.shard.block_size, self.config.sliding_window, self.device, self._paged_kernel
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        with self._attention_backends():
            hidden = self.model(ids, pos, self.kv_cache.device_cache, meta)

        token_ids = torch.zeros(len(samplers), dtype=torch.long, device=self.device)
        logprobs = torch.zeros(len(samplers), dtype=torch.float32, device=self.device)
        top = None
        if samplers and self.parallel.is_last_stage:
            rows = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
            # Every tensor rank of the last stage joins the logits all-gather; only one samples.
            logits = self.model.compute_logits(hidden[rows])
            if self.parallel.is_sampling_rank:
                logits = adjust_logits(logits, [_adjust_row(s, self._eos_token_ids) for s in samplers])
                token_ids, logprobs, top = self.sampler.sample_with_alternatives(
                    logits, [_sampling_row(s) for s in samplers]
                )
        # Pipelined plans: other ranks learn the tokens from a later plan; a broadcast here would
        # make every stage wait for the last one.
        learns_now = self.parallel.is_sampling_rank or not tokens_in_later_plans
        if samplers and not tokens_in_later_plans:
            token_ids = self.parallel.broadcast_from_sampling_rank(token_ids)

        for state, count in scheduled:
            state.num_computed_tokens += count
        sampled = token_ids.tolist()
        lps = logprobs.tolist()
        top_ids, top_lps = (top[0].tolist(), top[1].tolist()) if top is not None else (None, None)
        result: list[SampledToken] = []
        for row, (state, token, lp) in enumerate(zip(samplers, sampled, lps, strict=True)):
            if not learns_now:
                continue
            state.token_ids.append(token)
            state.num_output_tokens += 1
            if self.parallel.is_sampling_rank:
                k = state.sampling.top_logprobs
                alternatives = (top_ids[row][:k], top_lps[row][:k]) if top_ids is not None and k else None
                logprob = lp if state.sampling.logprobs > 0 else 0.0
                result.append(SampledToken(state.seq_id, token, logprob, alternatives))
        return result


def _adjust_row(state: SequenceState, eos_token_ids: list[int]) -> AdjustRow:
    adjustment = LogitsAdjustment.from_params(state.sampling, eos_token_ids)
    return AdjustRow(adjustment, state.token_ids, state.num_output_tokens)


def _sampling_row(state: SequenceState) -> SamplingRow:
    s = state.sampling
    return SamplingRow(
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        seed=s.seed,
        output_position=state.num_output_tokens,
        want_logprob=s.logprobs > 0,
        top_logprobs=s.top_logprobs,
    )


def attention_backends(device: torch.device, enable_flash_attn: bool) -> Callable[[], AbstractContextManager]:
    """The SDPA kernels attention may use, as a context factory wrapped around each forward.

    Flash kernels exist only on CUDA; on CPU the option does not apply and SDPA picks its CPU kernel.
    """
    if device.type != "cuda":
        if enable_flash_attn:
            logger.info("enable_flash_attn does not apply on %s: attention runs SDPA's CPU kernel", device)
        return contextlib.nullcontext
    backends = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if enable_flash_attn:
        backends.insert(0, SDPBackend.FLASH_ATTENTION)
    return functools.partial(sdpa_kernel, backends)
