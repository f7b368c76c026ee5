"""Hand-built scheduler replicas for the rescheduler's unit tests: GetLoad answers from a table,
Migrate calls recorded (and held until released, when asked)."""

from __future__ import annotations

import asyncio

from infermesh.v1 import scheduler_pb2
from infermesh_shared.config.typed import FrontendReschedulingConfig


def options(**overrides):
    """A rescheduling_config section with the schema's defaults, runnable policies, and overrides."""
    values = {
        "enable_rescheduling": True,
        "colocated_rescheduling_mode": True,
        "rescheduling_policies": ("decode_load", "neutral_failover"),
    }
    values.update(overrides)
    return FrontendReschedulingConfig(**values)


def report(
    *running: tuple[str, int, int],
    projected: float = 0.0,
    serving: bool = True,
    draining: bool = False,
    total_blocks: int = 100,
    waiting: tuple[str, ...] = (),
) -> scheduler_pb2.GetLoadResponse:
    """A GetLoad answer: running requests as (id, tokens, blocks), in arrival order."""
    answer = scheduler_pb2.GetLoadResponse(
        kv_cache_usage_ratio_projected=projected,
        serving=serving,
        draining=draining,
        total_blocks=total_blocks,
        free_blocks=total_blocks,
        num_running=len(running),
        num_waiting=len(waiting),
    )
    for arrival, (rid, tokens, blocks) in enumerate(running):
        answer.requests.add(
            request_id=rid, arrival=arrival, num_tokens=tokens, num_blocks=blocks, running=True
        )
    for rid in waiting:
        answer.requests.add(request_id=rid, arrival=1000, num_tokens=10, running=False)
    return answer


class FakeReplica:
    def __init__(self, load: scheduler_pb2.GetLoadResponse, migrated: bool = True) -> None:
        self.load = load
        self.migrated = migrated
        self.calls: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None
        self.unreachable = False

    async def GetLoad(self, request, timeout=None):  # noqa: N802 - the stub's name
        if self.unreachable:
            raise _unavailable()
        return self.load

    async def Migrate(self, request, timeout=None):  # noqa: N802
        self.calls.append((request.request_id, request.destination_address))
        if self.hold is not None:
            await self.hold.wait()
        if self.migrated:
            return scheduler_pb2.MigrateResponse(migrated=True, downtime_s=0.01, bytes_copied=10)
        return scheduler_pb2.MigrateResponse(reason="refused for the test")


def _unavailable():
    import grpc

    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")
