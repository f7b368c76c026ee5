"""/metrics serves each service's own registry on a port the caller can learn."""

from __future__ import annotations

import grpc
import pytest
from infermesh_shared.telemetry import (
    CacheConfig,
    RequestMetrics,
    SchedulerLoadFigures,
    SchedulerMetrics,
    WorkerMetrics,
    create_registry,
    start_metrics_server,
)

from tests.telemetry.metrics_scrape import Samples, scrape_service


def _scrape(url: str, service: str, model_name: str = "") -> Samples:
    return scrape_service(url, service, model_name)


def test_two_services_serve_their_own_counters() -> None:
    front_registry = create_registry("frontend")
    sched_registry = create_registry("scheduler", "tiny-llama")
    front, sched = RequestMetrics(front_registry), RequestMetrics(sched_registry)
    figures = SchedulerLoadFigures(
        requests_running=2,
        requests_waiting=4,
        kv_cache_usage_ratio=0.25,
        prefix_cache_queries=32,
        prefix_cache_hits=16,
        preemptions=1,
        total_blocks=512,
    )
    reads: list[int] = []

    def read_load() -> SchedulerLoadFigures:
        reads.append(1)
        return figures

    state = SchedulerMetrics(sched_registry, read_load, CacheConfig(16, "bf16", True, False))
    front_server = start_metrics_server(0, front_registry)
    sched_server = start_metrics_server(0, sched_registry)
    try:
        assert front_server.port != sched_server.port and front_server.port > 0
        for _ in range(3):
            front.request_ended(grpc.StatusCode.OK)
            front.time_to_first_token.observe(0.02)
        front.request_ended(grpc.StatusCode.RESOURCE_EXHAUSTED)
        sched.request_finished(
            prompt_tokens=7, generation_tokens=30, finished_reason="length", e2e_seconds=1.5
        )
        state.queue_time.observe(0.5)
        state.request_phases_ended(scheduled_at=10.0, first_token_at=10.25, last_token_at=12.0)
        reads.clear()

        front_registry.model_name = "tiny-llama"  # learnt from the scheduler after start
        front_samples = _scrape(front_server.url, "frontend", "tiny-llama")
        assert front_samples[("infermesh_requests_total", (("status", "ok"),))] == 3
        assert front_samples[("infermesh_requests_total", (("status", "resource_exhausted"),))] == 1
        assert front_samples[("infermesh_time_to_first_token_seconds_count", ())] == 3
        assert front_samples[("infermesh_time_to_first_token_seconds_bucket", (("le", "0.01"),))] == 0
        assert front_samples[("infermesh_time_to_first_token_seconds_bucket", (("le", "0.04"),))] == 3
        assert ("infermesh_requests_waiting", ()) not in front_samples
        assert ("process_cpu_seconds_total", ()) in front_samples

        sched_samples = _scrape(sched_server.url, "scheduler", "tiny-llama")
        assert reads == [1]  # state is read once per scrape, not kept up to date by the scheduler
        assert sched_samples[("infermesh_requests_total", (("status", "ok"),))] == 1
        assert sched_samples[("infermesh_request_success_total", (("finished_reason", "length"),))] == 1
        assert sched_samples[("infermesh_request_prompt_tokens_bucket", (("le", "5.0"),))] == 0
        assert sched_samples[("infermesh_request_prompt_tokens_bucket", (("le", "10.0"),))] == 1
        assert sched_samples[("infermesh_request_generation_tokens_sum", ())] == 30
        assert sched_samples[("infermesh_e2e_request_latency_seconds_sum", ())] == 1.5
        assert sched_samples[("infermesh_request_prefill_time_seconds_sum", ())] == 0.25
        assert sched_samples[("infermesh_request_decode_time_seconds_sum", ())] == 1.75
        cache_labels = (
            ("block_size", "16"),
            ("cache_dtype", "bf16"),
            ("enable_prefix_caching", "true"),
            ("enable_swap", "false"),
            ("num_blocks", "512"),
        )
        assert sched_samples[("infermesh_cache_config_info", cache_labels)] == 1
        assert sched_samples[("infermesh_queue_time_seconds_count", ())] == 1
        assert sched_samples[("infermesh_requests_running", ())] == 2
        assert sched_samples[("infermesh_requests_waiting", ())] == 4
        assert sched_samples[("infermesh_kv_cache_usage_ratio", ())] == 0.25
        assert sched_samples[("infermesh_prefix_cache_queries_total", ())] == 32
        assert sched_samples[("infermesh_prefix_cache_hits_total", ())] == 16
        assert sched_samples[("infermesh_preemptions_total", ())] == 1
    finally:
        front_server.stop()
        sched_server.stop()


def test_worker_step_histogram() -> None:
    registry = create_registry("worker")
    metrics = WorkerMetrics(registry)
    server = start_metrics_server(0, registry)
    try:
        metrics.step_seconds.observe(0.003)
        metrics.step_tokens.inc(17)
        metrics.model_loaded("/models/tiny-llama/")
        samples = _scrape(server.url, "worker", "tiny-llama")
        assert samples[("infermesh_worker_step_seconds_count", ())] == 1
        assert samples[("infermesh_worker_step_tokens_total", ())] == 17
    finally:
        server.stop()


def test_taken_port_and_bad_port_are_refused() -> None:
    registry = create_registry("worker")
    server = start_metrics_server(0, registry)
    try:
        with pytest.raises(OSError):
            start_metrics_server(server.port, create_registry("worker"))
        with pytest.raises(ValueError, match="0..65535"):
            start_metrics_server(70000, registry)
    finally:
        server.stop()


def test_scheduler_state_before_the_scheduler_exists_and_on_read_failure() -> None:
    registry = create_registry("scheduler")
    answers: list[object] = [None, RuntimeError("event loop closed")]

    def read_load() -> SchedulerLoadFigures | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    SchedulerMetrics(registry, read_load)
    server = start_metrics_server(0, registry)
    try:
        for _ in range(2):
            samples = _scrape(server.url, "scheduler")
            assert ("infermesh_requests_running", ()) not in samples
            assert samples[("infermesh_engine_steps_total", ())] == 0
    finally:
        server.stop()
