"""The request facts a routing policy looks at, and the interface every policy implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from infermesh_frontend.routing.replica_load import ReplicaLoad


@dataclass(slots=True)
class RouteRequest:
    """What a policy may use to choose a replica for one request."""

    prompt_token_ids: Sequence[int] = ()
    session_id: str = ""
    # The request's prefix-cache namespace: the scheduler hashes its blocks under it.
    cache_salt: str = ""


class RoutingPolicy(Protocol):
    """Chooses one of the candidate replicas for a request."""

    #: The dispatch_policy value that selects this policy.
    name: str

    def pick(self, request: RouteRequest, candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
        """Returns one of `candidates` (replicas that are up), or None when there is none.

        Candidates come sorted by address, so equal choices are the same on every frontend.
        """
        ...
