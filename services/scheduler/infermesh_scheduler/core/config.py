"""The options the scheduler core obeys: its slice of the scheduler config."""

from __future__ import annotations

from dataclasses import dataclass, fields

from infermesh_shared.config.schema import load_schema
from infermesh_shared.config.typed import SchedulerConfig, default_values
from infermesh_shared.config.validate import chunk_bounds_errors, option_errors, preemption_threshold_errors

_SCHEMA = load_schema("scheduler")
_OPTION = default_values("scheduler")


@dataclass(slots=True)
class SchedulerCoreConfig:
    """The scheduler options the core obeys (named, typed and defaulted as in scheduler.schema.json;
    tests/config/test_typed_config.py holds them to it) plus what the running service learns:
    the pool sizes from the workers, EOS ids and vocabulary from the model."""

    block_size: int = _OPTION["block_size"]
    num_blocks: int = _OPTION["total_blocks"]
    num_cpu_blocks: int = _OPTION["num_cpu_blocks"]
    max_batch_size: int = _OPTION["max_batch_size"]
    max_tokens_per_step: int = _OPTION["max_tokens_per_step"]
    # Resolved: the config's 0 ("the model's") is replaced by the model's max_position_embeddings.
    max_model_len: int = 4096
    eos_token_ids: tuple[int, ...] = ()
    enable_prefix_cache: bool = _OPTION["enable_prefix_cache"]
    prefix_cache_capacity: int = _OPTION["prefix_cache_capacity"]
    enable_cow: bool = _OPTION["enable_cow"]
    enable_preemption: bool = _OPTION["enable_preemption"]
    preemption_threshold: int = _OPTION["preemption_threshold"]
    enable_swap: bool = _OPTION["enable_swap"]
    policy: str = _OPTION["policy"]
    default_priority: int = _OPTION["default_priority"]
    max_queue_size: int = _OPTION["max_queue_size"]
    queue_overflow_policy: str = _OPTION["queue_overflow_policy"]
    chunked_prefill: str = _OPTION["chunked_prefill"]
    chunk_size: int = _OPTION["chunk_size"]
    min_chunk_size: int = _OPTION["min_chunk_size"]
    max_chunk_size: int = _OPTION["max_chunk_size"]
    target_step_time_ms: float = _OPTION["target_step_time_ms"]
    deadline_multiplier: float = _OPTION["deadline_multiplier"]
    min_deadline_s: float = _OPTION["min_deadline_s"]
    # Token ids must be below this; 0 skips the check.
    vocab_size: int = 0
    # Resolved: plans that may be outstanding (scheduled, update() not yet applied) at once; the
    # config's 0 means pp_size, so every pipeline stage has a micro-batch. 1 makes schedule() and
    # update() strictly alternate.
    max_inflight_plans: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every option that cannot work: each option against its schema,
        the cross-field rules of the config, and what only the sized pool can tell."""
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _OPTION}
        problems = option_errors(_SCHEMA, options)
        problems += chunk_bounds_errors(self.min_chunk_size, self.max_chunk_size)
        problems += preemption_threshold_errors(self.preemption_threshold, self.num_blocks)
        if self.num_blocks <= 0:
            problems.append(f"num_blocks must be > 0 (got {self.num_blocks})")
        if self.max_model_len <= 1:
            problems.append(f"max_model_len must be > 1 (got {self.max_model_len})")
        if self.max_inflight_plans <= 0:
            problems.append(f"max_inflight_plans must be > 0 (got {self.max_inflight_plans})")
        if self.enable_swap and self.num_cpu_blocks <= 0:
            problems.append("enable_swap needs num_cpu_blocks > 0 (CPU blocks to swap into)")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_config(cls, cfg: SchedulerConfig, num_blocks: int, num_cpu_blocks: int) -> SchedulerCoreConfig:
        """The core's slice of a loaded scheduler config (every option named like a field here),
        with the pool sizes the workers reported and the model's EOS ids and vocabulary."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name in cfg.option_names}
        metadata = cfg.model_metadata
        return cls(
            **values
            | {
                "num_blocks": num_blocks,
                "num_cpu_blocks": num_cpu_blocks,
                "eos_token_ids": tuple(metadata.eos_token_ids) if metadata else (),
                "vocab_size": metadata.vocab_size if metadata else 0,
                # One micro-batch per pipeline stage keeps every stage busy.
                "max_inflight_plans": cfg.max_inflight_plans or cfg.pp_size,
            }
        )
