"""Discovery sources: static list, DNS, and Redis registration with a TTL lease (real redis-server)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis
from infermesh_shared.discovery import (
    DiscoveryError,
    DnsDiscovery,
    RedisDiscovery,
    RedisRegistration,
    StaticDiscovery,
    advertised_address,
    make_discovery,
    split_host_port,
)


def test_static() -> None:
    assert StaticDiscovery(["a:1", " b:2 ", ""]).resolve() == {"a:1", "b:2"}
    with pytest.raises(ValueError, match="scheduler_addresses"):
        make_discovery("static", scheduler_addresses=[])


def test_dns_resolves_every_record() -> None:
    found = DnsDiscovery("localhost:50051").resolve()
    assert found and found <= {"127.0.0.1:50051", "[::1]:50051"}
    with pytest.raises(DiscoveryError, match="cannot resolve"):
        DnsDiscovery("no-such-host.invalid:1").resolve()


def test_option_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match="dns_name"):
        make_discovery("dns")
    with pytest.raises(ValueError, match="dns_name"):
        make_discovery("dns", dns_name="scheduler")
    with pytest.raises(ValueError, match="redis_url"):
        make_discovery("redis")
    with pytest.raises(ValueError, match="expected static, dns or redis"):
        make_discovery("etcd")
    assert split_host_port("[::1]:5") == ("::1", 5)


def test_redis_registration_lifecycle(redis_url: str) -> None:
    discovery = make_discovery("redis", redis_url=redis_url)
    assert discovery.resolve() == frozenset()
    first = RedisRegistration(redis_url, "127.0.0.1:7001", ttl_s=0.6)
    with first, RedisRegistration(redis_url, "127.0.0.1:7002", ttl_s=0.6):
        assert discovery.resolve() == {"127.0.0.1:7001", "127.0.0.1:7002"}
        # The heartbeat keeps the lease past several TTLs.
        time.sleep(1.5)
        assert discovery.resolve() == {"127.0.0.1:7001", "127.0.0.1:7002"}
    # Clean shutdown deregisters at once.
    assert discovery.resolve() == frozenset()
    discovery.close()


def test_dead_replica_expires_with_its_lease(redis_url: str) -> None:
    registration = RedisRegistration(redis_url, "127.0.0.1:7003", ttl_s=0.5)
    registration.start()
    # Simulate a crash: the heartbeat stops and nobody deregisters.
    registration._stop.set()
    registration._thread.join()
    discovery = RedisDiscovery(redis_url)
    assert discovery.resolve() == {"127.0.0.1:7003"}
    deadline = time.monotonic() + 5
    while discovery.resolve() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert discovery.resolve() == frozenset()
    registration._client.close()


def test_unreachable_redis() -> None:
    with pytest.raises(DiscoveryError, match="Redis"):
        RedisDiscovery("redis://127.0.0.1:1/0").resolve()
    with pytest.raises(redis.RedisError):
        RedisRegistration("redis://127.0.0.1:1/0", "a:1", ttl_s=1).start()


def test_advertised_address() -> None:
    assert advertised_address("sched-a:50051", "0.0.0.0", 1) == "sched-a:50051"
    assert advertised_address("", "127.0.0.1", 50051) == "127.0.0.1:50051"
    wildcard = advertised_address("", "0.0.0.0", 50051)
    assert wildcard.endswith(":50051") and not wildcard.startswith("0.0.0.0")


@pytest.mark.parametrize("module", ["infermesh_worker.server", "infermesh_scheduler.server"])
def test_a_service_without_redis_configured_does_not_import_the_redis_client(module):
    # Every worker and scheduler start paid ~0.1 s for it (twenty fresh groups in one test start 70).
    code = f"import sys, {module}; sys.exit('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
