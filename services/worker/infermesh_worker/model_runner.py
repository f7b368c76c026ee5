"""Runs step plans: keeps per-sequence state, applies the plan's deltas, runs one batched forward
over every scheduled token, and samples for sequences that reached the end of their known tokens."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from infermesh.v1 import worker_pb2
from infermesh_shared.config.kv_sizing import blocks_for_budget, gpu_kv_budget_bytes
from torch.nn.attention import SDPBackend, sdpa_kernel

from infermesh_worker.attention_metadata import ScheduledChunk, build_attention_metadata
from infermesh_worker.checkpoint_reader import CheckpointReader
from infermesh_worker.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from infermesh_worker.kernels.paged_attention_ext import load_paged_attention
from infermesh_worker.kv_cache import DTYPE_SIZES, KVCache, kv_block_bytes
from infermesh_worker.layers.sampler import Sampler
from infermesh_worker.model_config import ModelConfig, load_model_config
from infermesh_worker.models.llama import LlamaFamilyModel
from infermesh_worker.parallel import ParallelContext, init_parallel, validate_parallel_shape
from infermesh_worker.sequence_state import SequenceState
from infermesh_worker.sharding import plan_shard

logger = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


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


@dataclass(slots=True)
class LoadResult:
    max_num_blocks: int
    block_bytes: int


@dataclass(slots=True)
class SampledToken:
    seq_id: int
    token_id: int
    logprob: float


@dataclass(slots=True)
class StepResult:
    step_id: int
    tokens: list[SampledToken]
    compute_time_us: int


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"dtype {name!r} is not supported; use bf16, fp16 or fp32") from None


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
        self.config: ModelConfig | None = None
        self.model: LlamaFamilyModel | None = None
        self.kv_cache: KVCache | None = None
        self.block_size = 0
        self.max_model_len = 0
        self.block_bytes = 0
        self.sequences: dict[int, SequenceState] = {}
        self.broken_reason = ""
        self._attention_backends: Callable[[], AbstractContextManager] = contextlib.nullcontext
        self._paged_kernel: Callable | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def load_model(self, spec: LoadSpec) -> LoadResult:
        """Joins the process group, loads this rank's shard and says how many KV blocks fit."""
        dtype = parse_dtype(spec.dtype)
        if spec.block_size < 1:
            raise InvalidArgumentError("block_size must be >= 1")
        if dtype == torch.float16 and self.device.type == "cpu":
            logger.warning("fp16 on CPU is slow; bf16 or fp32 are better choices there")
        validate_parallel_shape(spec.tp_size, spec.tp_rank, spec.pp_size, spec.pp_rank)
        if not Path(spec.model_path).is_dir():
            raise InvalidArgumentError(f"model_path {spec.model_path!r} is not a directory on this worker")
        config = load_model_config(spec.model_path, spec.config_overrides_json)
        self._attention_backends = attention_backends(self.device, spec.enable_flash_attn)
        # On CPU the in-place kernel replaces the per-step gather; CUDA keeps SDPA's kernels.
        self._paged_kernel = load_paged_attention() if self.device.type == "cpu" else None
        # Check the split before joining the group so every rank fails the same way, at once.
        plan_shard(config, ParallelContext(spec.tp_size, spec.tp_rank, spec.pp_size, spec.pp_rank))
        self.shutdown()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL binds each rank to the current device
        parallel = init_parallel(
            spec.tp_size,
            spec.tp_rank,
            spec.pp_size,
            spec.pp_rank,
            init_method=spec.dist_init_method,
            backend=spec.dist_backend,
            timeout_s=self.dist_timeout_s,
        )
        try:
            shard = plan_shard(config, parallel)
            max_model_len = spec.max_model_len or config.max_position_embeddings
            max_positions = max(max_model_len, config.max_position_embeddings)
            model = LlamaFamilyModel(config, shard, parallel, max_positions, dtype, self.device)
            reader = CheckpointReader(spec.model_path, dtype, self.device)
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
        self.parallel = parallel
        self.broken_reason = ""
        self.config = config
        self.model = model
        self.block_size = spec.block_size
        self.max_model_len = max_model_len
        self.block_bytes = kv_block_bytes(
            spec.block_size, model.num_local_layers, shard.num_kv_heads, config.head_dim, DTYPE_SIZES[dtype]
        )
        return LoadResult(max_num_blocks=self._blocks_that_fit(spec), block_bytes=self.block_bytes)

    def _blocks_that_fit(self, spec: LoadSpec) -> int:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = gpu_kv_budget_bytes(total, total - free, spec.gpu_memory_utilization)
            if self.kv_cache_memory_bytes:
                budget = min(budget, self.kv_cache_memory_bytes)
        else:
            budget = self.kv_cache_memory_bytes
        return blocks_for_budget(budget, self.block_bytes)

    def init_kv_cache(self, num_blocks: int, num_cpu_blocks: int) -> None:
        if self.model is None:
            raise FailedPreconditionError("InitKVCache before LoadModel: load the model first")
        if num_blocks < 1:
            raise InvalidArgumentError("num_blocks must be >= 1")
        shard = self.model.shard
        try:
            self.kv_cache = KVCache(
                self.model.num_local_layers,
                num_blocks,
                num_cpu_blocks,
                self.block_size,
                shard.num_kv_heads,
                self.config.head_dim,
                self.model.dtype,
                self.device,
            )
        except (RuntimeError, MemoryError) as exc:
            raise ResourceExhaustedError(
                f"cannot allocate {num_blocks} KV blocks of {self.block_bytes} bytes "
                f"(+{num_cpu_blocks} CPU blocks): {exc}"
            ) from exc
        self.sequences.clear()

    def _abandon_group(self, reason: str) -> None:
        """Leaves a process group after a failed step. Peers blocked in a collective with this rank
        then fail at once (their connections close) instead of waiting for the collective timeout,
        so the whole group is quickly ready for the scheduler's Reset + LoadModel."""
        logger.error("%s; leaving the process group, LoadModel must be called again", reason)
        self.shutdown()
        self.broken_reason = reason

    def reset(self) -> None:
        """Forgets every sequence; the model and KV cache stay."""
        self.sequences.clear()

    def shutdown(self) -> None:
        self.sequences.clear()
        self.kv_cache = None
        self.model = None
        self.parallel.destroy()
        self.parallel = ParallelContext()

    # --- one step ----------------------------------------------------------------------------

    def execute(self, plan: worker_pb2.StepPlan) -> StepResult:
        if self.model is None and self.broken_reason:
            raise FailedPreconditionError(
                f"this worker left its process group after a failed step ({self.broken_reason}); "
                "call LoadModel again to rebuild the group"
            )
        if self.model is None:
            raise FailedPreconditionError("Execute before LoadModel: load the model first")
        if self.kv_cache is None:
            raise FailedPreconditionError("Execute before InitKVCache: allocate the KV cache first")
        start = time.perf_counter()
        try:
            self._validate(plan)
            tokens = self._apply_and_run(plan)
        except Exception as exc:
            if self.parallel.world_size > 1:
                # Peers may already wait in a collective for this rank (e.g. if its state diverged);
                # leaving the group releases them, and the scheduler rebuilds a group whose step failed.
                self._abandon_group(f"step {plan.step_id} failed: {type(exc).__name__}: {exc}")
            raise
        elapsed_us = int((time.perf_counter() - start) * 1e6)
        return StepResult(step_id=plan.step_id, tokens=tokens, compute_time_us=elapsed_us)

    def _apply_and_run(self, plan: worker_pb2.StepPlan) -> list[SampledToken]:
        for seq_id in plan.finished_seq_ids:
            self.sequences.pop(seq_id, None)
        self.kv_cache.swap_out([(m.src, m.dst) for m in plan.swap_out])
        self.kv_cache.swap_in([(m.src, m.dst) for m in plan.swap_in])
        self.kv_cache.copy([(m.src, m.dst) for m in plan.copy])
        scheduled: list[tuple[SequenceState, int]] = []
        for new in plan.new_sequences:
            state = self._new_state(new)
            self.sequences[new.seq_id] = state
            if new.num_scheduled_tokens:
                scheduled.append((state, new.num_scheduled_tokens))
        for told in plan.sampled_tokens:
            state = self.sequences.get(told.seq_id)
            if state is not None and _lacks_next_token(state):
                state.token_ids.append(told.token_id)
                state.num_output_tokens += 1
        for running in plan.running_sequences:
            state = self.sequences[running.seq_id]
            state.block_table.extend(running.new_block_ids)
            if running.num_scheduled_tokens:
                scheduled.append((state, running.num_scheduled_tokens))
        return self._run(scheduled, plan.tokens_in_later_plans) if scheduled else []

    def _new_state(self, new: worker_pb2.NewSequence) -> SequenceState:
        sampling = new.sampling
        return SequenceState(
            seq_id=new.seq_id,
            token_ids=list(new.token_ids),
            block_table=list(new.block_ids),
            num_computed_tokens=new.num_computed_tokens,
            num_output_tokens=new.num_output_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p if sampling.top_p > 0 else 1.0,
            min_p=sampling.min_p,
            seed=sampling.seed if sampling.HasField("seed") else None,
            want_logprobs=sampling.logprobs > 0,
        )

    def _validate(self, plan: worker_pb2.StepPlan) -> None:
        """Rejects a bad plan before anything changes, so state stays consistent (and every rank,
        receiving the same plan, rejects it identically without entering a collective)."""
        num_blocks = self.kv_cache.num_blocks
        vocab = self.config.vocab_size
        self.kv_cache.check_moves("swap_out", [(m.src, m.dst) for m in plan.swap_out])
        self.kv_cache.check_moves("swap_in", [(m.src, m.dst) for m in plan.swap_in])
        self.kv_cache.check_moves("copy", [(m.src, m.dst) for m in plan.copy])
        finished = set(plan.finished_seq_ids)
        told: set[int] = set()
        for token in plan.sampled_tokens:
            if token.token_id >= vocab:
                raise InvalidArgumentError(
                    f"sampled token {token.token_id} of sequence {token.seq_id} >= vocab_size {vocab}"
                )
            told.add(token.seq_id)
        seen: set[int] = set()
        for new in plan.new_sequences:
            if new.seq_id in seen:
                raise InvalidArgumentError(f"sequence {new.seq_id} appears twice in step {plan.step_id}")
            seen.add(new.seq_id)
            if not new.token_ids:
                raise InvalidArgumentError(f"new sequence {new.seq_id} has no tokens")
            bad = [t for t in new.token_ids if t >= vocab]
            if bad:
                raise InvalidArgumentError(
                    f"sequence {new.seq_id} has token id {bad[0]} >= vocab_size {vocab}"
                )
            s = new.sampling
            if s.temperature < 0 or not 0 <= s.top_p <= 1 or not 0 <= s.min_p <= 1 or s.top_k < 0:
                raise InvalidArgumentError(
                    f"sequence {new.seq_id} has out-of-range sampling parameters "
                    f"(temperature={s.temperature}, top_p={s.top_p}, top_k={s.top_k}, min_p={s.min_p})"
                )
            self._check_chunk(
                new.seq_id,
                len(new.token_ids),
                list(new.block_ids),
                new.num_computed_tokens,
                new.num_scheduled_tokens,
                num_blocks,
            )
        for running in plan.running_sequences:
            if running.seq_id in seen:
                raise InvalidArgumentError(f"sequence {running.seq_id} appears twice in step {plan.step_id}")
            seen.add(running.seq_id)
            state = self.sequences.get(running.seq_id)
            if state is None or running.seq_id in finished:
                raise FailedPreconditionError(
                    f"step {plan.step_id}: worker holds no sequence {running.seq_id}; send it in "
                    "new_sequences (in full) after a Reset, a preemption or a worker restart"
                )
            if running.num_computed_tokens != state.num_computed_tokens:
                raise FailedPreconditionError(
                    f"step {plan.step_id}: sequence {running.seq_id} has {state.num_computed_tokens} "
                    f"computed tokens on this worker but the scheduler says {running.num_computed_tokens}; "
                    "the scheduler and worker disagree - reset the worker and resend the sequence in full"
                )
            # A token told in this plan is appended before the step runs.
            learned = 1 if running.seq_id in told and _lacks_next_token(state) else 0
            self._check_chunk(
                running.seq_id,
                len(state.token_ids) + learned,
                state.block_table + list(running.new_block_ids),
                running.num_computed_tokens,
                running.num_scheduled_tokens,
                num_blocks,
            )

    def _check_chunk(
        self, seq_id: int, known: int, blocks: list[int], computed: int, scheduled: int, num_blocks: int
    ) -> None:
        end = computed + scheduled
        if end > known:
            raise InvalidArgumentError(
                f"sequence {seq_id}: computing tokens up to {end} but only {known} tokens are known"
            )
        if end > self.max_model_len:
            raise InvalidArgumentError(
                f"sequence {seq_id}: {end} tokens exceed max_model_len {self.max_model_len}"
            )
        if len(blocks) * self.block_size < end:
            raise InvalidArgumentError(
                f"sequence {seq_id}: {len(blocks)} blocks of {self.block_size} tokens "
                f"cannot hold {end} tokens"
            )
        bad = [b for b in blocks if b >= num_blocks]
        if bad:
            raise InvalidArgumentError(f"sequence {seq_id}: block id {bad[0]} >= num_blocks {num_blocks}")

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
            chunks, self.block_size, self.config.sliding_window, self.device, self._paged_kernel
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        with self._attention_backends():
            hidden = self.model(ids, pos, self.kv_cache.device_cache, meta)

        token_ids = torch.zeros(len(samplers), dtype=torch.long, device=self.device)
        logprobs = torch.zeros(len(samplers), dtype=torch.float32, device=self.device)
        if samplers and self.parallel.is_last_stage:
            rows = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
            # Every tensor rank of the last stage joins the logits all-gather; only one samples.
            logits = self.model.compute_logits(hidden[rows])
            if self.parallel.is_sampling_rank:
                token_ids, logprobs = self.sampler.sample(logits, [s.sampling_row() for s in samplers])
        # Pipelined plans: other ranks learn the tokens from a later plan; a broadcast here would
        # make every stage wait for the last one.
        learns_now = self.parallel.is_sampling_rank or not tokens_in_later_plans
        if samplers and not tokens_in_later_plans:
            token_ids = self.parallel.broadcast_from_sampling_rank(token_ids)

        for state, count in scheduled:
            state.num_computed_tokens += count
        sampled = token_ids.tolist()
        lps = logprobs.tolist()
        result: list[SampledToken] = []
        for state, token, lp in zip(samplers, sampled, lps, strict=True):
            if not learns_now:
                continue
            state.token_ids.append(token)
            state.num_output_tokens += 1
            if self.parallel.is_sampling_rank:
                result.append(SampledToken(state.seq_id, token, lp if state.want_logprobs else 0.0))
        return result


def _lacks_next_token(state: SequenceState) -> bool:
    """Every known token is computed: the next one was sampled elsewhere and is not known here yet."""
    return state.num_computed_tokens == len(state.token_ids)


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
