"""Keeps grpc.health.v1 in line with the worker group and the queue depth."""

from __future__ import annotations

import logging
from collections.abc import Callable

from grpc_health.v1 import health
from infermesh_shared.grpc_server import set_serving

logger = logging.getLogger(__name__)

# Seed 002: a replica whose waiting queue is at 80% of its capacity reports itself unhealthy,
# so routers send new work elsewhere before requests start to be refused.
QUEUE_HEALTH_THRESHOLD = 0.8


class ServingHealth:
    """Computes the serving flag and pushes changes to the health servicer."""

    def __init__(
        self,
        servicer: health.HealthServicer,
        service_names: list[str],
        max_queue_size: int,
        group_ready: Callable[[], bool],
        num_waiting: Callable[[], int],
    ) -> None:
        self._servicer = servicer
        self._names = service_names
        self._max_queue_size = max_queue_size
        self._group_ready = group_ready
        self._num_waiting = num_waiting
        self._serving: bool | None = None

    def serving(self) -> bool:
        """True when the worker group is whole and the waiting queue is below the threshold."""
        if not self._group_ready():
            return False
        return self._num_waiting() < QUEUE_HEALTH_THRESHOLD * self._max_queue_size

    def refresh(self) -> None:
        """Recomputes the flag; touches the health servicer only when it changed."""
        serving = self.serving()
        if serving != self._serving:
            self._serving = serving
            set_serving(self._servicer, self._names, serving)
            logger.info("health: %s", "SERVING" if serving else "NOT_SERVING")
