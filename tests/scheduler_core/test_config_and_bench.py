"""SchedulerCoreConfig from the flat settings, its validation, and the benchmark's shape."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from infermesh_cli.scheduler_bench import run_scheduler_bench
from infermesh_scheduler.core import SchedulerCoreConfig


def settings(**overrides):
    values = dict(
        block_size=16,
        max_batch_size=8,
        max_tokens_per_step=1024,
        max_model_len=0,
        enable_prefix_cache=True,
        prefix_cache_capacity=5000,
        enable_cow=True,
        enable_preemption=True,
        preemption_threshold=2,
        enable_swap=False,
        policy="edf",
        default_priority=3,
        max_queue_size=10,
        queue_overflow_policy="drop_oldest",
        chunked_prefill="dynamic",
        chunk_size=128,
        min_chunk_size=16,
        max_chunk_size=512,
        target_step_time_ms=20.0,
        deadline_multiplier=2.0,
        min_deadline_s=0.1,
        port=1234,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


META = SimpleNamespace(max_position_embeddings=2048, eos_token_ids=[2, 7], vocab_size=1000)


def test_from_settings_reads_flat_keys_and_model_metadata():
    cfg = SchedulerCoreConfig.from_settings(settings(), META, num_blocks=300, num_cpu_blocks=40)
    assert cfg.num_blocks == 300 and cfg.num_cpu_blocks == 40
    assert cfg.max_model_len == 2048 and cfg.eos_token_ids == (2, 7) and cfg.vocab_size == 1000
    assert cfg.policy == "edf" and cfg.queue_overflow_policy == "drop_oldest" and cfg.default_priority == 3
    assert cfg.chunked_prefill == "dynamic" and cfg.target_step_time_ms == 20.0
    smaller = SchedulerCoreConfig.from_settings(settings(max_model_len=512), META, 300, 0)
    assert smaller.max_model_len == 512


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="enable_swap needs num_cpu_blocks"):
        SchedulerCoreConfig.from_settings(settings(enable_swap=True), META, num_blocks=300, num_cpu_blocks=0)
    with pytest.raises(ValueError, match="policy must be one of"):
        SchedulerCoreConfig(policy="random")
    with pytest.raises(ValueError, match="preemption_threshold"):
        SchedulerCoreConfig(num_blocks=4, preemption_threshold=4)


def test_bench_reports_per_step_time():
    result = run_scheduler_bench(16, 5)
    assert result["num_running"] == 16 and result["steps"] == 5 and result["tokens_per_step"] == 16
    assert result["us_per_step"] > 0 and result["max_us"] >= result["p50_us"]
    assert result["cpu_us_per_step"] > 0 and result["cpu_max_us"] >= result["cpu_p50_us"]


def test_bench_keeps_the_waiting_requests_queued():
    result = run_scheduler_bench(8, 3, num_waiting=50)
    assert result["num_waiting"] == 50 and result["tokens_per_step"] == 8
