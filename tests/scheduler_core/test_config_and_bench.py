"""SchedulerCoreConfig from the loaded scheduler config, its validation, and the benchmark's shape."""

from __future__ import annotations

import pytest
from infermesh_cli.scheduler_bench import run_scheduler_bench
from infermesh_scheduler.core import SchedulerCoreConfig
from infermesh_shared.config import config_from_options

from tests.config.conftest import LLAMA3_8B_CONFIG, LLAMA3_GENERATION_CONFIG, write_model_dir


@pytest.fixture
def llama_dir(tmp_path):
    return write_model_dir(tmp_path / "llama", LLAMA3_8B_CONFIG, LLAMA3_GENERATION_CONFIG)


def scheduler_config(llama_dir, **overrides):
    options = dict(
        model_path=str(llama_dir),
        max_model_len=2048,
        max_batch_size=8,
        max_tokens_per_step=1024,
        prefix_cache_capacity=5000,
        enable_cow=True,
        preemption_threshold=2,
        policy="edf",
        default_priority=3,
        max_queue_size=10,
        queue_overflow_policy="drop_oldest",
        chunked_prefill="dynamic",
        min_chunk_size=16,
        max_chunk_size=512,
        target_step_time_ms=20.0,
        deadline_multiplier=2.0,
        min_deadline_s=0.1,
        port=1234,
    )
    return config_from_options("scheduler", **options | overrides)


def test_from_config_takes_the_core_slice_and_model_metadata(llama_dir):
    cfg = SchedulerCoreConfig.from_config(scheduler_config(llama_dir), num_blocks=300, num_cpu_blocks=40)
    assert cfg.num_blocks == 300 and cfg.num_cpu_blocks == 40
    assert (
        cfg.max_model_len == 2048
        and cfg.eos_token_ids == (128001, 128008, 128009)
        and cfg.vocab_size == 128256
    )
    assert cfg.policy == "edf" and cfg.queue_overflow_policy == "drop_oldest" and cfg.default_priority == 3
    assert cfg.chunked_prefill == "dynamic" and cfg.target_step_time_ms == 20.0
    assert cfg.max_inflight_plans == 1  # 0 in the config: one plan per pipeline stage
    whole = SchedulerCoreConfig.from_config(scheduler_config(llama_dir, max_model_len=0), 300, 0)
    assert whole.max_model_len == 8192  # 0: the model's max_position_embeddings, resolved at load


def test_invalid_combinations_are_refused(llama_dir):
    with pytest.raises(ValueError, match="enable_swap needs num_cpu_blocks"):
        SchedulerCoreConfig.from_config(
            scheduler_config(llama_dir, enable_swap=True), num_blocks=300, num_cpu_blocks=0
        )
    with pytest.raises(ValueError, match="policy must be one of"):
        SchedulerCoreConfig(policy="random")
    with pytest.raises(ValueError, match="preemption_threshold"):
        SchedulerCoreConfig(num_blocks=4, preemption_threshold=4)
    with pytest.raises(ValueError, match=r"min_chunk_size \(64\) must be <= max_chunk_size \(32\)"):
        SchedulerCoreConfig(min_chunk_size=64, max_chunk_size=32)


def test_bench_reports_per_step_time():
    result = run_scheduler_bench(16, 5)
    assert result["num_running"] == 16 and result["steps"] == 5 and result["tokens_per_step"] == 16
    assert result["us_per_step"] > 0 and result["max_us"] >= result["p50_us"]
    assert result["cpu_us_per_step"] > 0 and result["cpu_max_us"] >= result["cpu_p50_us"]


def test_bench_keeps_the_waiting_requests_queued():
    result = run_scheduler_bench(8, 3, num_waiting=50)
    assert result["num_waiting"] == 50 and result["tokens_per_step"] == 8
