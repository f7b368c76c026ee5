"""WorkerGroup's state changes in one place (_set_state): each is one event, and the engine loop
learns from the event (not from polling a counter) that the core's worker state was lost."""

from __future__ import annotations

import asyncio

from infermesh_scheduler.group_state import GroupEvent, GroupState
from infermesh_scheduler.worker_group import WorkerGroup
from infermesh_shared.config import config_from_options
from infermesh_shared.grpc_transport import TlsFiles

from tests.scheduler_service.service_harness import write_tiny_llama


def test_state_changes_are_events_and_only_losing_a_ready_group_loses_kv(tmp_path) -> None:
    cfg = config_from_options(
        "scheduler", model_path=str(write_tiny_llama(tmp_path)), group_recovery_timeout_ms=50
    )
    events: list[GroupEvent] = []

    async def run() -> None:
        group = WorkerGroup(cfg, TlsFiles(), on_state=events.append)
        group.report_failure("not ready yet")  # nothing to lose before the group formed
        assert events == []
        group._set_state(GroupState.FORMING, "test: forming")
        group._set_state(GroupState.FORMING, "test: again")  # not a change: no event
        group._set_state(GroupState.READY, "test: ready")
        group.report_failure("Execute on w1 failed: UNAVAILABLE")
        assert group.state is GroupState.RECOVERING
        await asyncio.sleep(0.3)  # recovery times out: DOWN
        await group.stop()

    asyncio.run(run())
    assert [(e.previous, e.state) for e in events] == [
        (GroupState.WAITING_FOR_WORKERS, GroupState.FORMING),
        (GroupState.FORMING, GroupState.READY),
        (GroupState.READY, GroupState.RECOVERING),
        (GroupState.RECOVERING, GroupState.DOWN),
    ]
    assert [e.lost_kv for e in events] == [False, False, True, False]
    assert "worker group broken: Execute on w1 failed" in events[2].why
    assert events[3].state.refuses_requests and not events[2].state.refuses_requests
