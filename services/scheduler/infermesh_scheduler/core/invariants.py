"""The scheduler's bookkeeping checks, which tests run after every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infermesh_scheduler.core.sequence import SeqStatus

if TYPE_CHECKING:
    from infermesh_scheduler.core.scheduler import Scheduler


def check_invariants(sched: Scheduler) -> None:
    """Assert the scheduler's lists, the KV pools and the outstanding plans agree."""
    seen: set[int] = set()
    for seq in sched._running:
        assert seq.status is SeqStatus.RUNNING, f"seq {seq.seq_id} in running with status {seq.status}"
        assert seq.seq_id not in seen
        seen.add(seq.seq_id)
    for seq in sched._swapped:
        assert seq.status is SeqStatus.SWAPPED and not seq.block_ids and not seq.sent
        assert seq.seq_id not in seen
        seen.add(seq.seq_id)
    waiting_tokens = 0
    for seq in sched._waiting:
        assert seq.status is SeqStatus.WAITING and not seq.block_ids and not seq.cpu_block_ids
        assert seq.seq_id not in seen and not seq.sent
        seen.add(seq.seq_id)
        waiting_tokens += seq.num_tokens
    assert waiting_tokens == sched._waiting.num_tokens, "waiting token count drifted"
    assert [s.rank for s in sched._running] == sorted(s.rank for s in sched._running), (
        "running not in rank order"
    )
    sched.kv.check_invariants(sched._running, sched._swapped)
    requests = sched._requests.values()
    queued = sum(1 for r in requests if not r.started)
    assert queued == sched._table.num_queued, (
        f"queue count {sched._table.num_queued} but {queued} unstarted requests"
    )
    live = {s.seq_id for r in requests for s in r.sequences if s.status is not SeqStatus.FINISHED}
    assert live == seen, "live sequences and scheduler lists disagree"
    assert len(sched._outstanding) <= sched.config.max_inflight_plans, "too many plans outstanding"
    in_plans: set[int] = set()
    for _, scheduled in sched._outstanding.plans:
        for seq in scheduled:
            assert seq.seq_id not in in_plans, f"seq {seq.seq_id} is in two outstanding plans"
            in_plans.add(seq.seq_id)
            assert seq.in_flight, f"seq {seq.seq_id} in an outstanding plan is not marked in flight"
            assert seq.status in (SeqStatus.RUNNING, SeqStatus.FINISHED), (
                f"seq {seq.seq_id} in flight is {seq.status}"
            )
    flagged = {s.seq_id for r in requests for s in r.sequences if s.in_flight}
    assert flagged <= in_plans, f"seqs {flagged - in_plans} marked in flight but in no outstanding plan"
