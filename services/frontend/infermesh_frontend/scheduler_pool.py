"""The scheduler replicas this frontend sends requests to, and the choice of one per request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc

logger = logging.getLogger(__name__)

SUPPORTED_DISPATCH_POLICIES = ("round_robin",)


@dataclass(slots=True)
class RequestContext:
    """What a routing policy may look at when it picks a replica for a request."""

    request_id: str
    prompt_token_ids: Sequence[int] = ()
    session_id: str = ""
    client_id: str = ""


@dataclass(slots=True)
class SchedulerReplica:
    """One scheduler: its address, channel and stub, and whether its last call reached it."""

    address: str
    channel: grpc.aio.Channel
    stub: scheduler_pb2_grpc.SchedulerServiceStub
    # False after a call failed with UNAVAILABLE; True again after any call gets through.
    reachable: bool = True


class NoSchedulerError(Exception):
    """No scheduler replica could be reached."""


class SchedulerPool:
    """Holds a channel per scheduler address and picks one replica per request.

    Round-robin for now, skipping replicas whose last call failed with UNAVAILABLE; when all
    have failed it tries them anyway, so a scheduler that comes back is used again.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        dispatch_policy: str = "round_robin",
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        if not addresses:
            raise ValueError("scheduler_addresses is empty: give at least one scheduler HOST:PORT")
        if dispatch_policy not in SUPPORTED_DISPATCH_POLICIES:
            raise ValueError(
                f"dispatch_policy {dispatch_policy!r} is not supported by this frontend yet; "
                f"supported: {', '.join(SUPPORTED_DISPATCH_POLICIES)}"
            )
        self.dispatch_policy = dispatch_policy
        self._interceptors = list(interceptors)
        self.replicas = [self._connect(address) for address in addresses]
        self._next = 0
        # Aborts run in the background (the request's own task may be cancelled); keep references
        # so they are not garbage-collected half way.
        self._aborts: set[asyncio.Task[None]] = set()
        self.abort_timeout_s = 5.0

    def _connect(self, address: str) -> SchedulerReplica:
        channel = grpc.aio.insecure_channel(address, interceptors=self._interceptors or None)
        return SchedulerReplica(
            address=address, channel=channel, stub=scheduler_pb2_grpc.SchedulerServiceStub(channel)
        )

    @property
    def addresses(self) -> list[str]:
        """The configured scheduler addresses, in order."""
        return [replica.address for replica in self.replicas]

    def pick(
        self, request_context: RequestContext, exclude: Sequence[SchedulerReplica] = ()
    ) -> SchedulerReplica:
        """Returns the replica to send `request_context` to, never one in `exclude`.

        Raises NoSchedulerError when every replica is excluded.
        """
        candidates = [replica for replica in self.replicas if replica not in exclude]
        if not candidates:
            raise NoSchedulerError(f"no scheduler replica is reachable at {', '.join(self.addresses)}")
        reachable = [replica for replica in candidates if replica.reachable]
        pool = reachable or candidates
        # Walk the ring from the cursor so every replica gets its turn.
        count = len(self.replicas)
        for step in range(count):
            replica = self.replicas[(self._next + step) % count]
            if replica in pool:
                self._next = (self._next + step + 1) % count
                return replica
        raise AssertionError("unreachable: pool is a non-empty subset of replicas")

    def report_result(self, replica: SchedulerReplica, code: grpc.StatusCode | None) -> None:
        """Records how a call to `replica` ended (None: it got an answer) for later picks."""
        was_reachable = replica.reachable
        replica.reachable = code != grpc.StatusCode.UNAVAILABLE
        if was_reachable and not replica.reachable:
            logger.warning("scheduler %s is unreachable; skipping it until it answers again", replica.address)
        elif replica.reachable and not was_reachable:
            logger.info("scheduler %s answers again", replica.address)

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
        """Waits for pending aborts, then closes every channel."""
        if self._aborts:
            await asyncio.wait(list(self._aborts), timeout=self.abort_timeout_s)
        for replica in self.replicas:
            await replica.channel.close()
