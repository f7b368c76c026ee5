"""How frontends find scheduler replicas (static list, DNS, Redis) and how schedulers register.

The Redis classes load on first use: the Redis client alone costs every process start ~0.1 s, and a
worker (or a service without redis_url) never needs it."""

from __future__ import annotations

import importlib
from typing import Any

from infermesh_shared.discovery.advertised_address import advertised_address
from infermesh_shared.discovery.discovery_factory import make_discovery
from infermesh_shared.discovery.dns_discovery import DnsDiscovery, join_host_port, split_host_port
from infermesh_shared.discovery.replica_discovery import DiscoveryError, ReplicaDiscovery, StaticDiscovery

_LAZY = {"RedisDiscovery": "redis_discovery", "RedisRegistration": "redis_registration"}

__all__ = [
    "advertised_address",
    "DiscoveryError",
    "DnsDiscovery",
    "RedisDiscovery",
    "RedisRegistration",
    "ReplicaDiscovery",
    "StaticDiscovery",
    "join_host_port",
    "make_discovery",
    "split_host_port",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
