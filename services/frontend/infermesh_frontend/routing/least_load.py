"""least_load: the replica with the fewest waiting + running requests."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh_frontend.routing.replica_load import ReplicaLoad
from infermesh_frontend.routing.route_request import RouteRequest


def least_loaded(candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
    """Returns the candidate with the smallest load key (first by address on ties), or None."""
    best: ReplicaLoad | None = None
    best_key: tuple[int, int, float] | None = None
    for replica in candidates:
        key = replica.load_key()
        if best_key is None or key < best_key:
            best, best_key = replica, key
    return best


class LeastLoadPolicy:
    """Sends each request to the least-loaded replica by requests, then queued prefill tokens,
    then free KV blocks."""

    name = "least_load"

    def pick(self, request: RouteRequest, candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
        return least_loaded(candidates)
