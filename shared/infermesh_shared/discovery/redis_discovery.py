"""Replicas from Redis: every live key under the namespace is one registered scheduler."""

from __future__ import annotations

import redis

from infermesh_shared.discovery.redis_keys import (
    DEFAULT_NAMESPACE,
    REDIS_SOCKET_TIMEOUT_S,
    address_from_key,
    replica_key_pattern,
)
from infermesh_shared.discovery.replica_discovery import DiscoveryError, ReplicaDiscovery


class RedisDiscovery(ReplicaDiscovery):
    """Reads the schedulers that hold a live lease in Redis (see RedisRegistration)."""

    kind = "redis"

    def __init__(self, redis_url: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not redis_url:
            raise ValueError("discovery = redis needs redis_url (e.g. redis://redis:6379/0)")
        self._namespace = namespace
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            decode_responses=True,
        )

    def resolve(self) -> frozenset[str]:
        try:
            keys = list(self._client.scan_iter(match=replica_key_pattern(self._namespace), count=256))
        except redis.RedisError as exc:
            raise DiscoveryError(f"cannot read scheduler registrations from Redis: {exc}") from exc
        return frozenset(address_from_key(self._namespace, key) for key in keys)

    def close(self) -> None:
        self._client.close()
