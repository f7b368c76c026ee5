"""Rendezvous (highest-random-weight) hashing: every frontend maps a key to the same replica
without sharing state, and a replica leaving moves only the keys it held."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from infermesh_frontend.routing.replica_load import ReplicaLoad


def rendezvous_weight(key: str, address: str) -> int:
    """Returns the stable weight of `address` for `key`."""
    digest = hashlib.blake2b(f"{key}\x00{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rendezvous_pick(key: str, candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
    """Returns the candidate with the highest weight for `key`, or None when there is none."""
    best: ReplicaLoad | None = None
    best_weight = -1
    for replica in candidates:
        weight = rendezvous_weight(key, replica.address)
        if weight > best_weight:
            best, best_weight = replica, weight
    return best
