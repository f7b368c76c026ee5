"""Routing of requests over scheduler replicas: load snapshots, replica health, and the
dispatch policies (round_robin, least_load, prefix_aware, session)."""

from infermesh_frontend.routing.least_load import LeastLoadPolicy, least_loaded
from infermesh_frontend.routing.policy_factory import DISPATCH_POLICIES, make_routing_policy
from infermesh_frontend.routing.prefix_aware import PrefixAwarePolicy
from infermesh_frontend.routing.replica_load import ReplicaLoad
from infermesh_frontend.routing.replica_table import LoadReport, ReplicaHealth, ReplicaTable
from infermesh_frontend.routing.round_robin import RoundRobinPolicy
from infermesh_frontend.routing.route_request import RouteRequest, RoutingPolicy
from infermesh_frontend.routing.session_affinity import SessionAffinityPolicy

__all__ = [
    "DISPATCH_POLICIES",
    "LeastLoadPolicy",
    "LoadReport",
    "PrefixAwarePolicy",
    "ReplicaHealth",
    "ReplicaLoad",
    "ReplicaTable",
    "RoundRobinPolicy",
    "RouteRequest",
    "RoutingPolicy",
    "SessionAffinityPolicy",
    "least_loaded",
    "make_routing_policy",
]
