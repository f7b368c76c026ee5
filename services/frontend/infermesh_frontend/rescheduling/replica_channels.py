"""infermesh-rescheduler's scheduler replicas: discovery read every discovery_interval_ms, one
channel per replica (its rescheduler certificate under mutual TLS)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from infermesh.v1 import scheduler_pb2_grpc
from infermesh_shared.discovery import ReplicaDiscovery
from infermesh_shared.discovery.replica_discovery import DiscoveryError
from infermesh_shared.grpc_transport import TlsFiles, open_aio_channel
from infermesh_shared.peer_roles import SCHEDULER

logger = logging.getLogger(__name__)


class ReplicaChannels:
    def __init__(self, discovery: ReplicaDiscovery, tls: TlsFiles, interval_s: float) -> None:
        self._discovery = discovery
        self._tls = tls
        self._interval_s = interval_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, scheduler_pb2_grpc.SchedulerServiceStub] = {}
        self._task: asyncio.Task[None] | None = None

    def stubs(self) -> dict[str, scheduler_pb2_grpc.SchedulerServiceStub]:
        return self._stubs

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def refresh(self) -> None:
        try:
            addresses = await asyncio.to_thread(self._discovery.resolve)
        except DiscoveryError as error:
            logger.warning("discovery failed, keeping %d replicas: %s", len(self._stubs), error)
            return
        for address in sorted(addresses - set(self._channels)):
            channel = open_aio_channel(address, self._tls, server_role=SCHEDULER)
            self._channels[address] = channel
            self._stubs[address] = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            logger.info("scheduler replica %s joined", address)
        for address in sorted(set(self._channels) - addresses):
            del self._stubs[address]
            await self._channels.pop(address).close()
            logger.info("scheduler replica %s left", address)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
        self._discovery.close()
