"""One Migrate call to a source replica, as the rescheduler and the operator RPCs make it."""

from __future__ import annotations

import grpc
from infermesh.v1 import rescheduler_pb2, scheduler_pb2


async def migrate(
    stub, request_id: str, destination: str, timeout_s: float
) -> rescheduler_pb2.MigrationOutcome:
    """Asks the source (`stub`) to move `request_id` to `destination`; never raises for a refusal
    or an RPC failure: the outcome says why it stays. A timed-out call may still complete on the
    source, which runs a migration it began to its end."""
    outcome = rescheduler_pb2.MigrationOutcome(request_id=request_id, destination_address=destination)
    try:
        result = await stub.Migrate(
            scheduler_pb2.MigrateRequest(request_id=request_id, destination_address=destination),
            timeout=timeout_s,
        )
    except grpc.aio.AioRpcError as error:
        outcome.reason = f"Migrate failed: {error.code().name}: {error.details()}"
        return outcome
    outcome.migrated = result.migrated
    outcome.reason = result.reason
    outcome.downtime_s = result.downtime_s
    outcome.bytes_copied = result.bytes_copied
    return outcome
