"""Builds the discovery source a frontend's configuration names."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh_shared.discovery.dns_discovery import DnsDiscovery
from infermesh_shared.discovery.replica_discovery import ReplicaDiscovery, StaticDiscovery


def make_discovery(
    kind: str,
    *,
    scheduler_addresses: Sequence[str] = (),
    dns_name: str = "",
    redis_url: str = "",
) -> ReplicaDiscovery:
    """Returns the source for `kind` ("static", "dns" or "redis"); raises ValueError naming the
    missing option."""
    if kind == "static":
        return StaticDiscovery(list(scheduler_addresses))
    if kind == "dns":
        return DnsDiscovery(dns_name)
    if kind == "redis":
        # Imported only when used: the Redis client costs every process start ~0.1 s.
        from infermesh_shared.discovery.redis_discovery import RedisDiscovery

        return RedisDiscovery(redis_url)
    raise ValueError(f"unknown discovery {kind!r}; expected static, dns or redis")
