"""A scheduler with redis_url holds a lease in Redis while it runs and removes it on SIGTERM."""

from __future__ import annotations

import time

import pytest
import redis
from infermesh_shared.discovery.redis_keys import DEFAULT_NAMESPACE, replica_key

from tests.routing.redis_server import running_redis_server
from tests.scheduler_service.service_harness import run_scheduler_to_exit, start_scheduler

pytestmark = pytest.mark.e2e


def test_scheduler_registers_and_deregisters(model_dir, tmp_path):
    with running_redis_server(tmp_path / "redis") as url:
        client = redis.Redis.from_url(url, socket_timeout=2)
        scheduler = start_scheduler(
            model_dir,
            "--redis-url",
            url,
            "--advertise-address",
            "sched-a.test:7000",
            "--redis-ttl-ms",
            "3000",
        )
        try:
            key = replica_key(DEFAULT_NAMESPACE, "sched-a.test:7000")
            assert client.exists(key)
            assert 0 < client.pttl(key) <= 3000
        finally:
            scheduler.stop()
        deadline = time.monotonic() + 5
        while client.exists(key):
            assert time.monotonic() < deadline, "the scheduler left its lease behind"
            time.sleep(0.05)
        client.close()


def test_unreachable_redis_fails_startup(model_dir):
    result = run_scheduler_to_exit(model_dir, "--port", "0", "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "cannot register in Redis" in result.stderr
