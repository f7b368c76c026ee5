"""Live migration between scheduler replicas: the source's Migrate and the destination's
ReserveMigration / AdoptMigration / CancelMigration (scheduler.proto).

The source drives: reserve on the destination, copy the complete blocks rank to rank (workers'
SendKVBlocks) while the request keeps decoding, again for blocks completed meanwhile, hold it,
copy the rest (stop-and-copy), have the destination adopt it, and only then hand it over here
(its stream ends with `migrated_to`). Any failure before the adoption cancels: the request goes
on here and the destination gives its reserved blocks back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc, worker_pb2
from infermesh_shared.grpc_transport import TlsFiles, open_aio_channel
from infermesh_shared.peer_roles import SCHEDULER

from infermesh_scheduler.core import migration
from infermesh_scheduler.core.migration import MigratedRequest, MigrationRefused
from infermesh_scheduler.engine_loop import EngineLoop
from infermesh_scheduler.group_state import GroupState
from infermesh_scheduler.request_codec import spec_from_submit
from infermesh_scheduler.request_telemetry import SchedulerTelemetry
from infermesh_scheduler.worker_group import WorkerGroup

logger = logging.getLogger(__name__)

# Copy stages while the request keeps decoding, before the final stop-and-copy.
MAX_STAGES = 3
# A reservation no source has adopted or cancelled after this long is given back (s).
RESERVATION_TTL_S = 120.0
# An adopted request whose stream nobody attached to after this long is aborted (s).
ATTACH_TIMEOUT_S = 30.0
# How often the source checks whether its held request left the plans in flight (s).
_QUIET_POLL_S = 0.002


@dataclass(slots=True)
class _Reservation:
    blocks: list[int] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)


class MigrationFailed(Exception):
    """The request stays where it is; the message says why, `label` names the stage for metrics."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


class MigrationService:
    def __init__(
        self,
        engine: EngineLoop,
        group: WorkerGroup,
        tls: TlsFiles,
        default_priority: int,
        timeout_s: float,
        telemetry: SchedulerTelemetry | None = None,
    ) -> None:
        self._telemetry = telemetry
        self._engine = engine
        self._group = group
        self._tls = tls
        self._default_priority = default_priority
        self._timeout_s = timeout_s
        self._incoming: dict[str, _Reservation] = {}
        # The Submit of each live request here, as it arrived: what an AdoptMigration carries.
        self.submits: dict[str, scheduler_pb2.SubmitRequest] = {}
        # Migrations running out of here; kept so a migration outlives its caller (below).
        self._outgoing: set[asyncio.Task] = set()

    # ----- destination side ---------------------------------------------------------------
    def _expire_reservations(self) -> None:
        scheduler = self._engine.scheduler
        now = time.monotonic()
        for mid, reservation in list(self._incoming.items()):
            if now - reservation.created > RESERVATION_TTL_S and scheduler is not None:
                logger.warning("migration %s: reservation abandoned by its source; releasing", mid)
                migration.release_in(scheduler, self._incoming.pop(mid).blocks)

    def reserve(
        self, request: scheduler_pb2.ReserveMigrationRequest
    ) -> scheduler_pb2.ReserveMigrationResponse:
        self._expire_reservations()
        scheduler = self._engine.scheduler
        settings = self._group.settings
        if scheduler is None or self._group.state is not GroupState.READY:
            raise MigrationRefused("this replica's worker group is not ready")
        mine = (scheduler.kv.block_size, settings.tp_size, settings.pp_size)
        theirs = (request.block_size, request.tp_size, request.pp_size)
        if mine != theirs:
            raise MigrationRefused(
                f"layouts differ (block_size, tp_size, pp_size): {theirs} at the source, {mine} here; "
                "KV blocks move only between groups with the same layout"
            )
        reservation = self._incoming.setdefault(request.migration_id, _Reservation())
        reservation.blocks = migration.extend_in(scheduler, reservation.blocks, request.num_tokens)
        return scheduler_pb2.ReserveMigrationResponse(
            block_ids=reservation.blocks, worker_addresses=self._group.member_addresses()
        )

    def adopt(self, request: scheduler_pb2.AdoptMigrationRequest) -> None:
        reservation = self._incoming.pop(request.migration_id, None)
        if reservation is None:
            raise MigrationRefused(f"no reservation for migration {request.migration_id!r}")
        timeout = request.timeout_s or None
        spec = spec_from_submit(request.request, self._default_priority, timeout)
        try:
            self._engine.adopt(MigratedRequest(spec, request.num_computed_tokens), reservation.blocks)
        except BaseException:
            migration.release_in(self._engine.scheduler, reservation.blocks)
            raise
        self.submits[spec.request_id] = request.request
        asyncio.get_running_loop().call_later(ATTACH_TIMEOUT_S, self._abort_unattached, spec.request_id)

    def _abort_unattached(self, request_id: str) -> None:
        if self._engine.attach(request_id) is not None:
            logger.warning("request %s migrated here but nobody attached to it; aborting", request_id)
            self._engine.abort(request_id)

    def cancel(self, migration_id: str) -> int:
        reservation = self._incoming.pop(migration_id, None)
        if reservation is None or self._engine.scheduler is None:
            return 0
        migration.release_in(self._engine.scheduler, reservation.blocks)
        return len(reservation.blocks)

    # ----- source side --------------------------------------------------------------------
    async def migrate(self, request_id: str, destination: str) -> scheduler_pb2.MigrateResponse:
        """Runs the migration to its end even when the caller goes away (its deadline passed, the
        rescheduler lost its lease): cancelled half way it would leave the request held here."""
        task = asyncio.get_running_loop().create_task(self._migrate_counted(request_id, destination))
        self._outgoing.add(task)
        task.add_done_callback(self._outgoing.discard)
        return await asyncio.shield(task)

    async def _migrate_counted(self, request_id: str, destination: str) -> scheduler_pb2.MigrateResponse:
        response, label = await self._migrate(request_id, destination)
        if self._telemetry is not None:
            outcome = "migrated" if response.migrated else "failed"
            self._telemetry.migration_ended(outcome, label, response.downtime_s, response.bytes_copied)
        return response

    async def _migrate(self, request_id: str, destination: str) -> tuple[scheduler_pb2.MigrateResponse, str]:
        """The answer, and the failure's label for metrics ("" when it migrated)."""
        scheduler = self._engine.scheduler
        submit = self.submits.get(request_id)
        if scheduler is None or submit is None:
            reason = f"request {request_id!r} is not live on this replica"
            return scheduler_pb2.MigrateResponse(reason=reason), "not_live"
        try:
            migration.start_out(scheduler, request_id)
        except MigrationRefused as refused:
            return scheduler_pb2.MigrateResponse(reason=str(refused)), "not_migratable"
        mid = f"{request_id}/{uuid.uuid4().hex[:12]}"
        channel = open_aio_channel(destination, self._tls, server_role=SCHEDULER)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        try:
            return await self._run(stub, scheduler, submit, request_id, mid, destination), ""
        except (MigrationFailed, MigrationRefused, grpc.aio.AioRpcError) as failure:
            if isinstance(failure, grpc.aio.AioRpcError):
                reason, label = (
                    failure.details() or failure.code().name,
                    f"destination_{failure.code().name.lower()}",
                )
            else:
                reason = str(failure)
                label = failure.label if isinstance(failure, MigrationFailed) else "ended_during_migration"
            logger.warning(
                "migration of %s to %s failed, it goes on here: %s", request_id, destination, reason
            )
            migration.cancel_out(scheduler, request_id)
            self._engine.wake()
            try:
                await stub.CancelMigration(
                    scheduler_pb2.CancelMigrationRequest(migration_id=mid), timeout=self._timeout_s
                )
            except grpc.aio.AioRpcError:
                pass  # the destination expires the reservation itself
            return scheduler_pb2.MigrateResponse(reason=reason), label
        finally:
            await channel.close()

    async def _run(self, stub, scheduler, submit, request_id: str, mid: str, destination: str):
        bs = scheduler.kv.block_size
        settings = self._group.settings

        async def reserve(num_tokens: int) -> scheduler_pb2.ReserveMigrationResponse:
            request = scheduler_pb2.ReserveMigrationRequest(
                migration_id=mid,
                num_tokens=num_tokens,
                block_size=bs,
                tp_size=settings.tp_size,
                pp_size=settings.pp_size,
            )
            return await stub.ReserveMigration(request, timeout=self._timeout_s)

        copied: list[int] = []
        sent_bytes = 0
        stages = 0
        for _ in range(MAX_STAGES):
            full = migration.complete_blocks(scheduler, request_id)
            if stages and len(full) - len(copied) <= 1:
                break  # little left: the stop-and-copy takes it
            reserved = await reserve(len(full) * bs)
            sent_bytes += await self._send(reserved, full[len(copied) :], len(copied), f"{mid}/{stages}")
            copied = full
            stages += 1
        migration.hold(scheduler, request_id)
        self._engine.wake()
        paused = time.monotonic()
        while not migration.is_quiet(scheduler, request_id):
            await asyncio.sleep(_QUIET_POLL_S)
        blocks, computed = migration.final_blocks(scheduler, request_id)
        reserved = await reserve(computed + 1)
        sent_bytes += await self._send(reserved, blocks[len(copied) :], len(copied), f"{mid}/final")
        moved = migration.snapshot(scheduler, request_id)
        request = scheduler_pb2.SubmitRequest()
        request.CopyFrom(submit)
        del request.resumed_output_token_ids[:]
        request.resumed_output_token_ids.extend(moved.spec.resumed_output_token_ids)
        adopt = scheduler_pb2.AdoptMigrationRequest(
            migration_id=mid,
            request=request,
            num_computed_tokens=moved.num_computed_tokens,
            timeout_s=moved.spec.timeout_s or 0.0,
        )
        await stub.AdoptMigration(adopt, timeout=self._timeout_s)
        try:
            self._engine.hand_over(request_id, destination)
        except (MigrationRefused, KeyError):
            # Aborted here while the destination adopted it: end it there too.
            await stub.Abort(scheduler_pb2.AbortRequest(request_id=request_id), timeout=self._timeout_s)
            raise MigrationFailed(
                f"request {request_id!r} was aborted during its migration", "aborted"
            ) from None
        self.submits.pop(request_id, None)
        downtime = time.monotonic() - paused
        logger.info(
            "request %s migrated to %s: %d bytes in %d+1 stages, paused %.1f ms",
            request_id,
            destination,
            sent_bytes,
            stages,
            downtime * 1e3,
        )
        return scheduler_pb2.MigrateResponse(
            migrated=True, bytes_copied=sent_bytes, downtime_s=downtime, num_stages=stages
        )

    async def _send(self, reserved, src: list[int], offset: int, transfer_id: str) -> int:
        """Copies src blocks of every rank into reserved.block_ids[offset:], rank to same rank."""
        if not src:
            return 0
        destinations = list(reserved.worker_addresses)
        members = self._group.members()
        if len(destinations) != len(members):
            raise MigrationFailed(
                f"the destination has {len(destinations)} workers, this replica {len(members)}"
            )
        dst = list(reserved.block_ids[offset : offset + len(src)])
        calls = [
            member.stub.SendKVBlocks(
                worker_pb2.SendKVBlocksRequest(
                    destination_address=address, src_block_ids=src, dst_block_ids=dst, transfer_id=transfer_id
                ),
                timeout=self._timeout_s,
            )
            for member, address in zip(members, destinations, strict=True)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            first = failed[0]
            detail = first.details() if isinstance(first, grpc.aio.AioRpcError) else repr(first)
            raise MigrationFailed(f"KV copy failed: {detail}", "copy_failed")
        return sum(r.num_bytes for r in results)
