"""One simulated scheduler replica: the service's own core `Scheduler`, driven step by step on the
virtual clock, with a worker whose step takes what the step-time law says."""

from __future__ import annotations

from collections.abc import Callable

from infermesh_frontend.routing.load_report import load_report_from_response
from infermesh_frontend.routing.replica_table import LoadReport
from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.load import LoadSnapshot
from infermesh_scheduler.core.scheduler import Scheduler
from infermesh_scheduler.core.step_plan import SampledToken, StepPlan
from infermesh_scheduler.load_response import load_response
from infermesh_scheduler.serving_health import ServingHealth

from infermesh_cli.simulate.step_time import StepTimeLaw

# The token every simulated step samples: lengths are fixed by max_tokens (EOS is ignored).
_SAMPLED_TOKEN_ID = 7


class SimReplica:
    """A scheduler replica and its worker group; `plan` is the step in flight (None: idle)."""

    __slots__ = (
        "index",
        "address",
        "scheduler",
        "plan",
        "step_s",
        "steps",
        "busy_s",
        "requests",
        "_health",
        "_law",
        "_worker_rtt_s",
        "_check_every",
        "_waiting",
    )

    def __init__(
        self,
        index: int,
        config: SchedulerCoreConfig,
        clock: Callable[[], float],
        law: StepTimeLaw,
        worker_rtt_s: float,
        check_every: int,
    ) -> None:
        self.index = index
        self.address = f"sim-scheduler-{index:05d}:50051"
        # The virtual clock is both the monotonic and the wall clock the core reads.
        self.scheduler = Scheduler(config, clock=clock)
        self.plan: StepPlan | None = None
        self.step_s = 0.0
        self.steps = 0
        self.busy_s = 0.0
        self.requests = 0
        self._law = law
        self._worker_rtt_s = worker_rtt_s
        self._check_every = check_every
        self._waiting = 0
        # The service's own serving rule (queue depth against max_queue_size); the group is whole.
        self._health = ServingHealth(None, [], config.max_queue_size, lambda: True, lambda: self._waiting)

    def start_step(self) -> float | None:
        """Plans the next step; returns its duration in seconds, or None when there is nothing to run."""
        scheduler = self.scheduler
        plan = scheduler.schedule()
        if plan.is_empty():
            scheduler.update(plan, [])
            self.plan = None
            return None
        self.plan = plan
        # The plan goes to the worker and the tokens come back: one hop each way.
        self.step_s = self._law.plan_seconds(plan) + self._worker_rtt_s
        return self.step_s

    def finish_step(self) -> list:
        """Applies the step in flight with one sampled token per sequence; returns the core's outputs."""
        plan = self.plan
        assert plan is not None
        self.plan = None
        sampled = [SampledToken(s.seq_id, _SAMPLED_TOKEN_ID) for s in plan.new_sequences]
        sampled.extend(SampledToken(s.seq_id, _SAMPLED_TOKEN_ID) for s in plan.running_sequences)
        scheduler = self.scheduler
        outputs = scheduler.update(plan, sampled)
        scheduler.record_step_time(plan, self.step_s)
        self.steps += 1
        self.busy_s += self.step_s
        if self._check_every and self.steps % self._check_every == 0:
            scheduler.check_invariants()
        return outputs

    def report(self) -> tuple[LoadSnapshot, LoadReport]:
        """What a GetLoad poll answers, through the same proto and parser the services use."""
        snapshot = self.scheduler.load()
        self._waiting = snapshot.num_waiting
        return snapshot, load_report_from_response(load_response(snapshot, self._health.serving()))
