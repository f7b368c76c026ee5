"""round_robin: each request to the next replica in turn."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh_frontend.routing.replica_load import ReplicaLoad
from infermesh_frontend.routing.route_request import RouteRequest


class RoundRobinPolicy:
    """Cycles over the candidates; a replica that leaves or joins shifts the turn, never skips
    the whole ring."""

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, request: RouteRequest, candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
        if not candidates:
            return None
        chosen = candidates[self._turn % len(candidates)]
        self._turn = (self._turn + 1) % (1 << 30)
        return chosen
