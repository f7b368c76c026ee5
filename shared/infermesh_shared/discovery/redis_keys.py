"""Where scheduler replicas register in Redis: one key per replica whose TTL is its lease."""

from __future__ import annotations

DEFAULT_NAMESPACE = "infermesh"

# Socket timeouts for Redis calls (seconds): a heartbeat or a discovery scan must never hang the
# caller for longer than a fraction of a lease.
REDIS_SOCKET_TIMEOUT_S = 1.0


def replica_key(namespace: str, address: str) -> str:
    """Returns the key under which the replica at `address` holds its lease."""
    return f"{namespace}:scheduler:{address}"


def replica_key_pattern(namespace: str) -> str:
    """Returns the SCAN pattern matching every replica's key."""
    return f"{namespace}:scheduler:*"


def address_from_key(namespace: str, key: str) -> str:
    """Returns the address part of a replica key."""
    return key[len(f"{namespace}:scheduler:") :]
