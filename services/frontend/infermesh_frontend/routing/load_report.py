"""Turns a scheduler's GetLoadResponse into the figures routing uses."""

from __future__ import annotations

from infermesh.v1 import scheduler_pb2

from infermesh_frontend.routing.replica_table import LoadReport


def load_report_from_response(response: scheduler_pb2.GetLoadResponse) -> LoadReport:
    """The routing-relevant part of one GetLoad answer."""
    return LoadReport(
        num_waiting=response.num_waiting,
        num_running=response.num_running,
        num_preempted=response.num_preempted,
        num_waiting_tokens=response.num_waiting_tokens,
        free_blocks=response.free_blocks + response.cached_blocks,
        total_blocks=response.total_blocks,
        serving=response.serving,
        cached_prefix_hashes=frozenset(response.cached_prefix_hashes),
        prefix_cache_hits=response.prefix_cache_hits,
    )
