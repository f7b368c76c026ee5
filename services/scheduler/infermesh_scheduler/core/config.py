"""The options the scheduler core obeys, read from the scheduler's flat config."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

POLICIES = ("continuous", "priority", "fair", "edf", "lrs")
OVERFLOW_POLICIES = ("block", "drop_newest", "drop_oldest")
CHUNKED_PREFILL_MODES = ("fixed", "dynamic")


@dataclass(slots=True)
class SchedulerCoreConfig:
    block_size: int = 16
    num_blocks: int = 1000
    num_cpu_blocks: int = 0
    max_batch_size: int = 256
    max_tokens_per_step: int = 4096
    max_model_len: int = 4096
    eos_token_ids: tuple[int, ...] = ()
    enable_prefix_cache: bool = True
    # Tokens the prefix cache may hold (rounded down to whole blocks); 0 caches nothing.
    prefix_cache_capacity: int = 100000
    enable_cow: bool = False
    enable_preemption: bool = True
    # Free blocks kept back: new work is admitted only while this many stay free, and a running
    # sequence preempts a lower-ranked one rather than dip below it.
    preemption_threshold: int = 0
    enable_swap: bool = False
    policy: str = "continuous"
    default_priority: int = 0
    max_queue_size: int = 1024
    queue_overflow_policy: str = "block"
    chunked_prefill: str = "fixed"
    chunk_size: int = 512
    min_chunk_size: int = 32
    max_chunk_size: int = 8192
    target_step_time_ms: float = 50.0
    deadline_multiplier: float = 1.5
    min_deadline_s: float = 0.5
    # Token ids must be below this; 0 skips the check.
    vocab_size: int = 0
    # Plans that may be outstanding (scheduled, update() not yet applied) at once: pp_size, so
    # every pipeline stage has a micro-batch. 1 makes schedule() and update() strictly alternate.
    max_inflight_plans: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first option that cannot work."""
        checks = [
            (self.block_size > 0, "block_size must be > 0"),
            (self.num_blocks > 0, "num_blocks must be > 0"),
            (self.num_cpu_blocks >= 0, "num_cpu_blocks must be >= 0"),
            (self.max_batch_size > 0, "max_batch_size must be > 0"),
            (self.max_tokens_per_step > 0, "max_tokens_per_step must be > 0"),
            (self.max_model_len > 1, "max_model_len must be > 1"),
            (self.prefix_cache_capacity >= 0, "prefix_cache_capacity must be >= 0"),
            (self.preemption_threshold >= 0, "preemption_threshold must be >= 0"),
            (self.policy in POLICIES, f"policy must be one of {POLICIES}, got {self.policy!r}"),
            (self.max_queue_size > 0, "max_queue_size must be > 0"),
            (
                self.queue_overflow_policy in OVERFLOW_POLICIES,
                f"queue_overflow_policy must be one of {OVERFLOW_POLICIES}, "
                f"got {self.queue_overflow_policy!r}",
            ),
            (
                self.chunked_prefill in CHUNKED_PREFILL_MODES,
                f"chunked_prefill must be one of {CHUNKED_PREFILL_MODES}, got {self.chunked_prefill!r}",
            ),
            (self.chunk_size > 0, "chunk_size must be > 0"),
            (self.max_inflight_plans > 0, "max_inflight_plans must be > 0"),
            (
                0 < self.min_chunk_size <= self.max_chunk_size,
                "min_chunk_size must be > 0 and <= max_chunk_size",
            ),
            (self.target_step_time_ms > 0, "target_step_time_ms must be > 0"),
            (self.deadline_multiplier > 0, "deadline_multiplier must be > 0"),
            (self.min_deadline_s >= 0, "min_deadline_s must be >= 0"),
            (
                not self.enable_swap or self.num_cpu_blocks > 0,
                "enable_swap needs num_cpu_blocks > 0 (CPU blocks to swap into)",
            ),
            (
                self.preemption_threshold < self.num_blocks,
                "preemption_threshold must be smaller than the number of KV blocks",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_settings(
        cls, cfg: Any, model_metadata: Any, num_blocks: int, num_cpu_blocks: int
    ) -> SchedulerCoreConfig:
        """Build from the scheduler's flat config plus the model's metadata and the sized pools.

        cfg has attributes named like this class's fields (load_config("scheduler", ...)).
        max_model_len 0 means the model's max_position_embeddings; a larger value is capped by it.
        """
        values: dict[str, Any] = {}
        skip = {
            "num_blocks",
            "num_cpu_blocks",
            "eos_token_ids",
            "max_model_len",
            "vocab_size",
            "max_inflight_plans",
        }
        for f in fields(cls):
            if f.name in skip:
                continue
            if hasattr(cfg, f.name):
                values[f.name] = getattr(cfg, f.name)
        model_max = int(getattr(model_metadata, "max_position_embeddings", 0) or 0)
        wanted = int(getattr(cfg, "max_model_len", 0) or 0)
        if wanted and model_max:
            max_model_len = min(wanted, model_max)
        else:
            max_model_len = wanted or model_max or 4096
        eos = getattr(model_metadata, "eos_token_ids", None) or ()
        return cls(
            num_blocks=num_blocks,
            num_cpu_blocks=num_cpu_blocks,
            max_model_len=max_model_len,
            eos_token_ids=tuple(int(t) for t in eos),
            vocab_size=int(getattr(model_metadata, "vocab_size", 0) or 0),
            # One micro-batch per pipeline stage keeps every stage busy.
            max_inflight_plans=int(getattr(cfg, "max_inflight_plans", 0) or 0)
            or max(1, int(getattr(cfg, "pp_size", 1) or 1)),
            **values,
        )
