"""ReschedulerService: the operator's drain and single-request migration, through a frontend or
infermesh-rescheduler instead of to a scheduler directly.

Only replicas the caller's discovery knows may be named (a request cannot make this process call
an arbitrary address); one drain per replica at a time; each Migrate is bounded by
llumlet_grpc_timeout_seconds and a drain runs at most rescheduling_max_migrations_per_replica
migrations at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import grpc
from infermesh.v1 import rescheduler_pb2, rescheduler_pb2_grpc, scheduler_pb2

from infermesh_frontend.rescheduling.load_policy import LoadMetric
from infermesh_frontend.rescheduling.migration_call import migrate
from infermesh_frontend.rescheduling.rescheduler import StubSource
from infermesh_frontend.rescheduling.round_plan import takers

MAX_DESTINATIONS = 64


class ReschedulerServicer(rescheduler_pb2_grpc.ReschedulerServiceServicer):
    def __init__(self, stubs: StubSource, options, refusal: Callable[[Any], str] | None = None) -> None:
        """`options`: a rescheduling_config section (for the timeout and the neutral load metric);
        `refusal(context)`: why a caller may not use these RPCs ("" when it may), checked first."""
        self._refusal = refusal
        self._stubs = stubs
        self._timeout_s = float(options.llumlet_grpc_timeout_seconds)
        self._neutral = LoadMetric(options.rescheduling_neutral_load_metric)
        # A drain runs this many migrations at once (the rescheduler's per-replica bound).
        self._parallel = options.rescheduling_max_migrations_per_replica
        self._draining: set[str] = set()

    async def _authorize(self, context) -> None:
        why = self._refusal(context) if self._refusal is not None else ""
        if why:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)

    async def _known(self, address: str, what: str, context) -> object:
        stub = self._stubs().get(address)
        if stub is None:
            known = ", ".join(sorted(self._stubs())) or "none"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{what} {address!r} is not a scheduler replica known here (known: {known})",
            )
        return stub

    async def DrainReplica(self, request: rescheduler_pb2.DrainReplicaRequest, context):
        await self._authorize(context)
        source = request.replica_address
        if not source:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "replica_address is required")
        if len(request.destination_addresses) > MAX_DESTINATIONS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_DESTINATIONS} destination_addresses"
            )
        if source in request.destination_addresses:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "destination_addresses names the replica drained"
            )
        stub = await self._known(source, "replica_address", context)
        for address in request.destination_addresses:
            await self._known(address, "destination", context)
        if source in self._draining:
            await context.abort(grpc.StatusCode.ABORTED, f"a drain of {source} is already running")
        self._draining.add(source)
        try:
            return await self._drain(source, stub, list(request.destination_addresses), context)
        finally:
            self._draining.discard(source)

    async def _drain(self, source: str, stub, destinations: list[str], context):
        load_request = scheduler_pb2.GetLoadRequest(include_requests=True)
        try:
            load = await stub.GetLoad(load_request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"replica {source}: {error.code().name}: {error.details()}"
            )
        if not destinations:
            destinations = await self._least_loaded(exclude=source)
        if not destinations:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no other serving scheduler replica to move the requests to",
            )
        running = sorted((r for r in load.requests if r.running), key=lambda r: r.arrival)
        response = rescheduler_pb2.DrainReplicaResponse(
            num_running=len(running), num_not_running=len(load.requests) - len(running)
        )
        cycle = itertools.cycle(destinations)
        slots = asyncio.Semaphore(self._parallel)

        async def move(request_id: str, destination: str):
            async with slots:
                return await migrate(stub, request_id, destination, self._timeout_s)

        outcomes = await asyncio.gather(*(move(item.request_id, next(cycle)) for item in running))
        response.outcomes.extend(outcomes)
        response.num_migrated = sum(outcome.migrated for outcome in outcomes)
        return response

    async def _least_loaded(self, exclude: str) -> list[str]:
        stubs = {a: s for a, s in self._stubs().items() if a != exclude}
        request = scheduler_pb2.GetLoadRequest()
        answers = await asyncio.gather(
            *(s.GetLoad(request, timeout=self._timeout_s) for s in stubs.values()), return_exceptions=True
        )
        reports = {a: r for a, r in zip(stubs, answers, strict=True) if not isinstance(r, BaseException)}
        # An operator's drain goes wherever there is a serving replica, loaded or not.
        return takers(reports, self._neutral, float("inf"))

    async def MigrateOne(self, request: rescheduler_pb2.MigrateOneRequest, context):
        await self._authorize(context)
        if not (request.request_id and request.source_address and request.destination_address):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "request_id, source_address and destination_address are required",
            )
        if request.source_address == request.destination_address:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "source and destination are the same replica"
            )
        stub = await self._known(request.source_address, "source_address", context)
        await self._known(request.destination_address, "destination_address", context)
        outcome = await migrate(stub, request.request_id, request.destination_address, self._timeout_s)
        return rescheduler_pb2.MigrateOneResponse(outcome=outcome)
