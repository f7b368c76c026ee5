"""Plans scheduled whose update() is still due, oldest first, and the rules for matching an
update() to its plan (in order; results of plans from before a worker reset are void)."""

from __future__ import annotations

from collections import deque

from infermesh_scheduler.core.sequence import Sequence
from infermesh_scheduler.core.step_plan import StepPlan


class OutstandingPlans:
    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.last_step_id = 0
        # (step_id, sequences it schedules), oldest first.
        self.plans: deque[tuple[int, list[Sequence]]] = deque()
        # Plans numbered below this were outstanding at a reset: their results are void.
        self._void_before = 0

    def __len__(self) -> int:
        return len(self.plans)

    def next_step_id(self) -> int:
        """Number the next plan; raises when max_inflight plans already wait for update()."""
        if len(self.plans) >= self.max_inflight:
            due = self.plans[0][0]
            if self.max_inflight == 1:
                raise RuntimeError(f"schedule() called again before update() of step {due}")
            raise RuntimeError(
                f"schedule() called with {len(self.plans)} plans outstanding "
                f"(max_inflight_plans={self.max_inflight}); apply update() of step {due} first"
            )
        self.last_step_id += 1
        return self.last_step_id

    def add(self, plan: StepPlan, scheduled: list[Sequence]) -> None:
        """Register a plan; its sequences are in flight (not scheduled or preempted) until its update()."""
        for seq in scheduled:
            seq.in_flight = True
        self.plans.append((plan.step_id, scheduled))

    def pop(self, plan: StepPlan) -> list[Sequence] | None:
        """The sequences of the plan whose update() is due; None for a void or never-registered plan."""
        plans = self.plans
        step = plan.step_id
        if not plans or step != plans[0][0]:
            if step <= self.last_step_id and (
                not plans  # an applied plan or one from before reset()
                or step < self._void_before
                or (plan.is_empty() and all(step != sid for sid, _ in plans))  # never registered
            ):
                return None
            due = plans[0][0] if plans else self.last_step_id
            raise ValueError(
                f"update() for step {step} but step {due} is in flight (updates come in plan order)"
            )
        _, scheduled = plans.popleft()
        for seq in scheduled:
            seq.in_flight = False
        return scheduled

    def latest_request_ids(self) -> list[str]:
        """Requests the latest outstanding plan serves, one per sequence."""
        if not self.plans:
            return []
        return [seq.request.spec.request_id for seq in self.plans[-1][1]]

    def reset(self) -> None:
        """Void every outstanding plan (the workers lost their state)."""
        for _, scheduled in self.plans:
            for seq in scheduled:
                seq.in_flight = False
        self.plans.clear()
        self._void_before = self.last_step_id + 1
