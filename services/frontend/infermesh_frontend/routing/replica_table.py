"""Every scheduler replica a frontend knows of: its load snapshot and whether it is up.

Driven from one event loop: discovery syncs the address set, the load poller applies reports and
marks failures, the request path records dispatches and finishes and asks for candidates.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from infermesh_frontend.routing.replica_load import ReplicaLoad

logger = logging.getLogger(__name__)


class ReplicaHealth(enum.Enum):
    """Whether a replica takes new requests."""

    # Discovered, no load report yet: not routed to until it answers once.
    UNKNOWN = "unknown"
    UP = "up"
    # Its last poll or call failed: not routed to until a poll succeeds again.
    DOWN = "down"


@dataclass(slots=True)
class LoadReport:
    """The routing-relevant figures of one GetLoadResponse."""

    num_waiting: int
    num_running: int
    num_preempted: int
    num_waiting_tokens: int
    free_blocks: int
    total_blocks: int
    serving: bool
    cached_prefix_hashes: frozenset[int]
    prefix_cache_hits: int


@dataclass(slots=True)
class _Replica:
    load: ReplicaLoad
    health: ReplicaHealth = ReplicaHealth.UNKNOWN


class ReplicaTable:
    """Load and health of the known replicas."""

    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}
        # Sorted candidate lists are rebuilt only when health or membership changes.
        self._candidates_cache: list[ReplicaLoad] | None = None
        # Called after health or membership changed (metrics).
        self.on_change: Callable[[], None] | None = None

    def health_counts(self) -> dict[ReplicaHealth, int]:
        """How many known replicas are in each health state."""
        counts: dict[ReplicaHealth, int] = {}
        for replica in self._replicas.values():
            counts[replica.health] = counts.get(replica.health, 0) + 1
        return counts

    def addresses(self) -> list[str]:
        """Known replica addresses, sorted."""
        return sorted(self._replicas)

    def health(self, address: str) -> ReplicaHealth | None:
        """The replica's health, or None when it is not known."""
        replica = self._replicas.get(address)
        return replica.health if replica else None

    def load(self, address: str) -> ReplicaLoad | None:
        """The replica's load snapshot, or None when it is not known."""
        replica = self._replicas.get(address)
        return replica.load if replica else None

    def sync(self, addresses: Iterable[str]) -> tuple[list[str], list[str]]:
        """Makes the known set equal `addresses`; returns (added, removed), each sorted."""
        wanted = set(addresses)
        added = sorted(wanted - self._replicas.keys())
        removed = sorted(self._replicas.keys() - wanted)
        for address in added:
            self._replicas[address] = _Replica(ReplicaLoad(address))
        for address in removed:
            del self._replicas[address]
        if added or removed:
            self._candidates_cache = None
            logger.info("scheduler replicas: +%s -%s -> %s", added, removed, sorted(self._replicas))
            if self.on_change is not None:
                self.on_change()
        return added, removed

    def apply_report(self, address: str, report: LoadReport) -> None:
        """Stores a fresh load report and marks the replica up."""
        replica = self._replicas.get(address)
        if replica is None:
            return
        load = replica.load
        if load.serving != report.serving:
            self._candidates_cache = None
        load.num_waiting = report.num_waiting
        load.num_running = report.num_running
        load.num_preempted = report.num_preempted
        load.num_waiting_tokens = report.num_waiting_tokens
        load.free_blocks = report.free_blocks
        load.total_blocks = report.total_blocks
        load.serving = report.serving
        load.cached_prefix_hashes = report.cached_prefix_hashes
        load.prefix_cache_hits = report.prefix_cache_hits
        load.own_at_report = load.own_in_flight
        self._set_health(address, replica, ReplicaHealth.UP)

    def mark_up(self, address: str) -> None:
        """Routes to the replica before any report (a configured static replica, before the
        first poll); its first failed poll or call takes it out again."""
        replica = self._replicas.get(address)
        if replica is not None:
            self._set_health(address, replica, ReplicaHealth.UP)

    def mark_down(self, address: str, reason: str) -> None:
        """Takes the replica out of routing until its next successful report."""
        replica = self._replicas.get(address)
        if replica is not None and replica.health is not ReplicaHealth.DOWN:
            logger.warning("scheduler %s is down (%s): routing around it", address, reason)
            self._set_health(address, replica, ReplicaHealth.DOWN)

    def record_dispatch(self, address: str) -> None:
        """Counts a request this frontend just sent to `address`."""
        replica = self._replicas.get(address)
        if replica is not None:
            replica.load.own_in_flight += 1

    def record_finish(self, address: str) -> None:
        """Counts a request to `address` that just ended (any way)."""
        replica = self._replicas.get(address)
        if replica is not None:
            replica.load.own_in_flight = max(0, replica.load.own_in_flight - 1)

    def candidates(self, exclude: Iterable[str] = ()) -> list[ReplicaLoad]:
        """Replicas to route to, sorted by address: those up and serving; when none serves, those
        up (the scheduler queues until its worker group is whole, or answers UNAVAILABLE)."""
        if self._candidates_cache is None:
            up = [r.load for _, r in sorted(self._replicas.items()) if r.health is ReplicaHealth.UP]
            serving = [load for load in up if load.serving]
            self._candidates_cache = serving or up
        excluded = set(exclude)
        if not excluded:
            return self._candidates_cache
        return [load for load in self._candidates_cache if load.address not in excluded]

    def _set_health(self, address: str, replica: _Replica, health: ReplicaHealth) -> None:
        if replica.health is not health:
            if replica.health is ReplicaHealth.DOWN and health is ReplicaHealth.UP:
                logger.info("scheduler %s answers again: routing to it", address)
            replica.health = health
            self._candidates_cache = None
            if self.on_change is not None:
                self.on_change()
