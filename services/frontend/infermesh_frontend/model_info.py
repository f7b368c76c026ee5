"""The served model's metadata as the schedulers report it, fetched once and kept."""

from __future__ import annotations

import asyncio
import logging

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2

from infermesh_frontend.request_error import RequestError
from infermesh_frontend.scheduler_pool import SchedulerPool

logger = logging.getLogger(__name__)

MODEL_INFO_TIMEOUT_S = 2.0


class ModelInfoSource:
    """Asks the schedulers for ModelInfo; remembers the last answer for request validation."""

    def __init__(self, pool: SchedulerPool) -> None:
        self._pool = pool
        self.cached: common_pb2.ModelInfo | None = None
        self._lock = asyncio.Lock()

    async def fetch(self) -> common_pb2.ModelInfo:
        """Asks each replica in turn until one answers; raises RequestError(UNAVAILABLE) if none does."""
        last_error = ""
        for replica in self._pool.replicas:
            try:
                response = await replica.stub.GetModelInfo(
                    scheduler_pb2.GetModelInfoRequest(), timeout=MODEL_INFO_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as error:
                self._pool.report_result(replica, error.code())
                last_error = f"{replica.address}: {error.code().name} {error.details()}"
                continue
            self._pool.report_result(replica, None)
            self.cached = response.model
            return response.model
        raise RequestError(
            grpc.StatusCode.UNAVAILABLE,
            f"no scheduler replica is reachable at {', '.join(self._pool.addresses)} "
            f"(last error: {last_error}); {self._pool.discovery_hint}",
        )

    async def get(self) -> common_pb2.ModelInfo:
        """The cached ModelInfo, fetched first if no scheduler has answered with a max_model_len yet."""
        if self.cached is not None and self.cached.max_model_len > 0:
            return self.cached
        async with self._lock:
            if self.cached is not None and self.cached.max_model_len > 0:
                return self.cached
            return await self.fetch()
