"""SchedulerService RPCs: admission and streaming for frontends, registration for workers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from infermesh_shared.field_violation import field_violation_metadata

from infermesh_scheduler.core import migration
from infermesh_scheduler.core.errors import InvalidRequestError
from infermesh_scheduler.core.migration import MigrationRefused
from infermesh_scheduler.core.request_check import RequestLimits, check_request
from infermesh_scheduler.engine_loop import EngineLoop
from infermesh_scheduler.load_response import load_response
from infermesh_scheduler.migration_rpcs import MigrationService
from infermesh_scheduler.request_codec import response_from_output, spec_from_submit
from infermesh_scheduler.request_stream import StreamError, StreamMoved
from infermesh_scheduler.request_telemetry import SchedulerTelemetry
from infermesh_scheduler.serving_health import ServingHealth
from infermesh_scheduler.submit_rejected import SubmitRejected
from infermesh_scheduler.worker_group import GroupFull, NameTaken, WorkerGroup

logger = logging.getLogger(__name__)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Turns RPCs into calls on the engine loop and the worker group."""

    def __init__(
        self,
        engine: EngineLoop,
        group: WorkerGroup,
        health: ServingHealth,
        limits: RequestLimits,
        default_priority: int,
        model_info: common_pb2.ModelInfo,
        telemetry: SchedulerTelemetry | None = None,
        migrations: MigrationService | None = None,
    ) -> None:
        self._telemetry = telemetry
        self._migrations = migrations
        self._engine = engine
        self._group = group
        self._health = health
        self._limits = limits
        self._default_priority = default_priority
        self._model_info = model_info

    async def Submit(
        self, request: scheduler_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.SubmitResponse]:
        if request.attach_migrated:
            stream = self._engine.attach(request.request_id)
            if stream is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no migrated request {request.request_id!r} waits here to be streamed",
                )
            if self._migrations is not None:
                self._migrations.submits[request.request_id] = request
            async for response in self._stream(request, stream, context):
                yield response
            return
        try:
            try:
                spec = spec_from_submit(request, self._default_priority, None)
                # Before the request waits for the worker group or for queue room.
                check_request(spec, self._limits)
            except InvalidRequestError as invalid:
                raise SubmitRejected.of(invalid) from None
            # The request's deadline is this call's gRPC deadline: time left, not a wall-clock
            # instant from another host's clock.
            timeout_s = context.time_remaining()
            if timeout_s is not None and timeout_s <= 0:
                raise SubmitRejected(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the request's deadline passed before it reached the scheduler",
                )
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            spec.timeout_s = timeout_s
            stream = await self._engine.submit(spec, request.non_blocking, deadline, request.queue_timeout_ms)
            if self._telemetry is not None:
                self._telemetry.request_described(request.request_id, request.operation)
        except SubmitRejected as rejected:
            logger.info(
                "request %s refused: %s: %s", request.request_id, rejected.code.name, rejected.message
            )
            if self._telemetry is not None:
                self._telemetry.request_rejected(rejected.code)
            await context.abort(
                rejected.code,
                rejected.message,
                field_violation_metadata(rejected.code, rejected.message, rejected.field),
            )
            return
        if self._migrations is not None:
            self._migrations.submits[request.request_id] = request
        async for response in self._stream(request, stream, context):
            yield response

    async def _stream(self, request, stream, context) -> AsyncIterator[scheduler_pb2.SubmitResponse]:
        end = (grpc.StatusCode.UNKNOWN, "the Submit handler failed")  # how the stream ended, for telemetry
        try:
            while True:
                item = await stream.get()
                if isinstance(item, StreamError):
                    end = (item.code, item.message)
                    await context.abort(item.code, item.message)
                    return
                if isinstance(item, StreamMoved):
                    end = (grpc.StatusCode.OK, "")
                    yield scheduler_pb2.SubmitResponse(migrated_to=item.address)
                    return
                response = response_from_output(item)
                if response is not None:
                    yield response
                if item.usage is not None:
                    end = (grpc.StatusCode.OK, "")
                    return
        except (asyncio.CancelledError, GeneratorExit):
            end = (grpc.StatusCode.CANCELLED, "the client went away")
            raise
        finally:
            if self._telemetry is not None:
                self._telemetry.request_ended(request.request_id, *end)
            if self._migrations is not None and self._migrations.submits.get(request.request_id) is request:
                del self._migrations.submits[request.request_id]
            if not stream.closed:
                # The client went away (cancelled RPC): free the request's blocks now.
                logger.info("request %s: client went away, aborting", request.request_id)
                self._engine.abort(request.request_id)

    async def Abort(
        self, request: scheduler_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.AbortResponse:
        return scheduler_pb2.AbortResponse(found=self._engine.abort(request.request_id))

    async def GetLoad(
        self, request: scheduler_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetLoadResponse:
        scheduler = self._engine.scheduler
        response = load_response(scheduler.load() if scheduler is not None else None, self._health.serving())
        response.draining = self._engine.draining
        if request.include_requests and scheduler is not None:
            for item in migration.request_loads(scheduler):
                response.requests.add(
                    request_id=item.request_id,
                    arrival=item.arrival,
                    num_tokens=item.num_tokens,
                    num_blocks=item.num_blocks,
                    running=item.running,
                )
        return response

    async def GetModelInfo(
        self, request: scheduler_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetModelInfoResponse:
        info = scheduler_pb2.GetModelInfoResponse(model=self._model_info)
        if self._group.num_blocks:
            info.model.total_blocks = self._group.num_blocks
        if self._group.dtype:
            info.model.dtype = self._group.dtype
        return info

    async def RegisterWorker(
        self, request: scheduler_pb2.RegisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RegisterWorkerResponse:
        if not request.address:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "address is empty: send the host:port where this worker serves WorkerService",
            )
        try:
            worker_id = await self._group.register(
                request.address, request.device or "cpu", request.worker_name
            )
        except GroupFull as full:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
        except NameTaken as taken:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(taken))
        return scheduler_pb2.RegisterWorkerResponse(worker_id=worker_id)

    async def CheckWorker(
        self, request: scheduler_pb2.CheckWorkerRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CheckWorkerResponse:
        if not self._group.is_registered(request.worker_id, request.address):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no worker {request.worker_id!r} at {request.address!r} is registered here; "
                "call RegisterWorker again",
            )
        return scheduler_pb2.CheckWorkerResponse()

    # ----- live migration (migration_rpcs.py) ------------------------------------------------
    def _migration_service(self) -> MigrationService:
        assert self._migrations is not None
        return self._migrations

    async def Migrate(self, request: scheduler_pb2.MigrateRequest, context) -> scheduler_pb2.MigrateResponse:
        if not request.request_id or not request.destination_address:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request_id and destination_address are required"
            )
        return await self._migration_service().migrate(request.request_id, request.destination_address)

    async def ReserveMigration(self, request, context) -> scheduler_pb2.ReserveMigrationResponse:
        try:
            return self._migration_service().reserve(request)
        except MigrationRefused as refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(refused))

    async def AdoptMigration(self, request, context) -> scheduler_pb2.AdoptMigrationResponse:
        try:
            self._migration_service().adopt(request)
        except MigrationRefused as refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(refused))
        return scheduler_pb2.AdoptMigrationResponse()

    async def CancelMigration(self, request, context) -> scheduler_pb2.CancelMigrationResponse:
        return scheduler_pb2.CancelMigrationResponse(
            num_blocks=self._migration_service().cancel(request.migration_id)
        )
