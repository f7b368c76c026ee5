"""The scheduler replicas this frontend sends requests to, and the choice of one per request.

Replicas come from discovery (a static list, DNS, or Redis registrations); each is polled for its
load (GetLoad) in the background and taken out of routing when a poll or a call fails, until it
answers again. The dispatch policy (routing/) picks among the replicas that are up; the request
path only reads the load table, it never calls a scheduler to decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc
from infermesh_shared.config.typed import FrontendRoutingConfig
from infermesh_shared.discovery import ReplicaDiscovery, StaticDiscovery
from infermesh_shared.grpc_transport import PLAINTEXT, TlsFiles, open_aio_channel
from infermesh_shared.peer_roles import SCHEDULER

from infermesh_frontend.routing import (
    DISPATCH_POLICIES,
    ReplicaHealth,
    ReplicaTable,
    RouteRequest,
    make_routing_policy,
)
from infermesh_frontend.routing.load_report import load_report_from_response
from infermesh_frontend.routing.replica_monitor import ReplicaMonitor
from infermesh_frontend.routing.replica_table import LoadReport
from infermesh_frontend.routing.routing_metrics import RoutingMetrics

logger = logging.getLogger(__name__)

SUPPORTED_DISPATCH_POLICIES = DISPATCH_POLICIES


@dataclass(slots=True)
class SchedulerReplica:
    """One scheduler: its address, channel and stub, and whether its last call reached it."""

    address: str
    channel: grpc.aio.Channel
    stub: scheduler_pb2_grpc.SchedulerServiceStub
    # False after a call or load poll failed; True again after the next poll that answers.
    reachable: bool = True


class NoSchedulerError(Exception):
    """No scheduler replica could be reached."""


class SchedulerPool:
    """Holds a channel per discovered scheduler and picks one replica per request.

    `start()` must run (on the event loop) before the pool routes: it reads discovery and polls
    every replica once, then keeps both up to date in the background until `close()`.
    """

    def __init__(
        self,
        routing: FrontendRoutingConfig,
        discovery: ReplicaDiscovery,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        *,
        metrics: RoutingMetrics | None = None,
        tls: TlsFiles = PLAINTEXT,
    ) -> None:
        self.dispatch_policy = routing.dispatch_policy
        self.policy = make_routing_policy(routing.dispatch_policy)
        self.table = ReplicaTable()
        self.metrics = metrics
        if metrics is not None:
            self.table.on_change = lambda: metrics.set_replica_health(self.table.health_counts())
        self._interceptors = list(interceptors)
        self._tls = tls
        self._replicas: dict[str, SchedulerReplica] = {}
        self._block_size = 0
        health_s = routing.health_check_interval_ms / 1000
        # How long a stream on a replica that is DOWN may stay silent before it fails over.
        self.stall_timeout_s = health_s
        self.monitor = ReplicaMonitor(
            discovery,
            self.table,
            self._fetch_load,
            # A poll is also the health check: poll at least once per health interval.
            poll_interval_s=min(routing.load_poll_interval_ms, routing.health_check_interval_ms) / 1000,
            health_timeout_s=health_s,
            discovery_interval_s=health_s,
            on_membership=self._on_membership,
            on_down=self._on_down,
        )
        self._started = False
        # Channels of replicas that left discovery: closed with the pool, not at once, so that a
        # request still streaming from a replica that deregistered is not cut off by us.
        self._retired: list[grpc.aio.Channel] = []
        if isinstance(discovery, StaticDiscovery):
            # Configured replicas are routable from the start; the first poll corrects that.
            static = sorted(discovery.resolve())
            self.table.sync(static)
            self._on_membership(static, [])
            for address in static:
                self.table.mark_up(address)
        # Aborts run in the background (the request's own task may be cancelled); keep references
        # so they are not garbage-collected half way.
        self._aborts: set[asyncio.Task[None]] = set()
        self.abort_timeout_s = 5.0

    async def start(self) -> None:
        """Finds the replicas and polls each once; then keeps doing so in the background."""
        if not self._started:
            self._started = True
            await self.monitor.start()

    @property
    def replicas(self) -> list[SchedulerReplica]:
        """Every known replica (up or not), by address."""
        return [self._replicas[address] for address in sorted(self._replicas)]

    @property
    def addresses(self) -> list[str]:
        """The known scheduler addresses, sorted."""
        return sorted(self._replicas)

    @property
    def discovery_hint(self) -> str:
        """What to do when no replica is reachable, for error messages."""
        return {
            "static": "start a scheduler or fix --scheduler-addresses",
            "dns": "start a scheduler or check that --dns-name resolves to it",
            "redis": "start a scheduler with --redis-url pointing at the same Redis",
        }.get(self.monitor.discovery.kind, "start a scheduler")

    def pick(self, route: RouteRequest, exclude: Sequence[SchedulerReplica] = ()) -> SchedulerReplica:
        """Returns the replica to send the request to, never one in `exclude`, and counts
        the request on it (call `release` when the request ends there).

        Raises NoSchedulerError when no replica that is up is left.
        """
        excluded = [replica.address for replica in exclude]
        candidates = self.table.candidates(excluded)
        if not candidates:
            addresses = (
                ", ".join(self.addresses) or f"(none found by discovery = {self.monitor.discovery.kind})"
            )
            raise NoSchedulerError(f"no scheduler replica is reachable at {addresses}")
        chosen = self.policy.pick(route, candidates)
        assert chosen is not None  # candidates is non-empty
        self.table.record_dispatch(chosen.address)
        if self.metrics is not None:
            self.metrics.routed.labels(replica=chosen.address).inc()
        return self._replicas[chosen.address]

    def take(self, address: str) -> SchedulerReplica | None:
        """The replica at `address` (where a request migrated), counted like `pick`; None if unknown."""
        replica = self._replicas.get(address)
        if replica is not None:
            self.table.record_dispatch(address)
        return replica

    def record_failover(self, reason: str) -> None:
        """Counts a request moved off its replica ("unavailable" or "stalled")."""
        if self.metrics is not None:
            self.metrics.failovers.labels(reason=reason).inc()

    def release(self, replica: SchedulerReplica) -> None:
        """Counts a request picked for `replica` as ended there."""
        self.table.record_finish(replica.address)

    def is_down(self, replica: SchedulerReplica) -> bool:
        """True when the replica's last poll or call failed."""
        return self.table.health(replica.address) in (ReplicaHealth.DOWN, None)

    def report_result(self, replica: SchedulerReplica, code: grpc.StatusCode | None) -> None:
        """Records how a call to `replica` ended (None: it got an answer); an UNAVAILABLE
        takes it out of routing until its next poll answers, which is asked for at once."""
        if code == grpc.StatusCode.UNAVAILABLE:
            replica.reachable = False
            self.table.mark_down(replica.address, "a call failed with UNAVAILABLE")
            self.monitor.poll_soon(replica.address)

    def send_abort(self, replica: SchedulerReplica, request_id: str) -> None:
        """Asks `replica` to end `request_id` and free its blocks, without waiting for the answer."""
        task = asyncio.get_running_loop().create_task(self._abort(replica, request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _abort(self, replica: SchedulerReplica, request_id: str) -> None:
        try:
            await replica.stub.Abort(
                scheduler_pb2.AbortRequest(request_id=request_id), timeout=self.abort_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            # The scheduler also drops a request whose Submit stream was cancelled; this is a backstop.
            logger.warning(
                "Abort of %s at %s failed: %s %s", request_id, replica.address, error.code(), error.details()
            )

    async def close(self) -> None:
        """Stops discovery and polling, waits for pending aborts, then closes every channel."""
        if self._started:
            await self.monitor.stop()
        if self._aborts:
            await asyncio.wait(list(self._aborts), timeout=self.abort_timeout_s)
        for channel in [replica.channel for replica in self._replicas.values()] + self._retired:
            await channel.close()
        self._replicas.clear()
        self._retired.clear()

    # ----- discovery and polling callbacks (ReplicaMonitor)

    def _on_membership(self, added: list[str], removed: list[str]) -> None:
        for address in added:
            channel = open_aio_channel(
                address, self._tls, server_role=SCHEDULER, interceptors=self._interceptors
            )
            self._replicas[address] = SchedulerReplica(
                address=address, channel=channel, stub=scheduler_pb2_grpc.SchedulerServiceStub(channel)
            )
        for address in removed:
            replica = self._replicas.pop(address, None)
            if replica is not None:
                self._retired.append(replica.channel)

    def _on_down(self, address: str) -> None:
        replica = self._replicas.get(address)
        if replica is not None:
            replica.reachable = False

    async def _fetch_load(self, address: str, timeout_s: float) -> LoadReport:
        replica = self._replicas[address]
        response = await replica.stub.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=timeout_s)
        if self._block_size == 0:
            info = await replica.stub.GetModelInfo(scheduler_pb2.GetModelInfoRequest(), timeout=timeout_s)
            self._block_size = info.model.block_size
            if hasattr(self.policy, "block_size"):
                self.policy.block_size = self._block_size
        replica.reachable = True
        return load_report_from_response(response)
