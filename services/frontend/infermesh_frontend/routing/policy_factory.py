"""Builds the routing policy a frontend's dispatch_policy names."""

from __future__ import annotations

from infermesh_frontend.routing.least_load import LeastLoadPolicy
from infermesh_frontend.routing.prefix_aware import PrefixAwarePolicy
from infermesh_frontend.routing.round_robin import RoundRobinPolicy
from infermesh_frontend.routing.route_request import RoutingPolicy
from infermesh_frontend.routing.session_affinity import SessionAffinityPolicy

DISPATCH_POLICIES = ("round_robin", "least_load", "prefix_aware", "session")


def make_routing_policy(dispatch_policy: str, *, block_size: int = 0) -> RoutingPolicy:
    """Returns a fresh policy for `dispatch_policy`; raises ValueError listing the valid names."""
    if dispatch_policy == "round_robin":
        return RoundRobinPolicy()
    if dispatch_policy == "least_load":
        return LeastLoadPolicy()
    if dispatch_policy == "prefix_aware":
        return PrefixAwarePolicy(block_size)
    if dispatch_policy == "session":
        return SessionAffinityPolicy()
    raise ValueError(
        f"unknown dispatch_policy {dispatch_policy!r}; expected one of {', '.join(DISPATCH_POLICIES)}"
    )
