"""The engine loop: schedule a step, run it on the worker group, route the tokens to streams.

Every change to the core Scheduler happens on the event loop. Aborts apply at once (the core
ignores the in-flight step's token for an ended sequence); resets after a worker failure and
failing requests when the group is down are applied between steps.

With pipeline parallelism the core allows max_inflight_plans (= pp_size) outstanding plans: the
loop keeps that many Execute calls running, one micro-batch per stage, and applies their results
in plan order. A failed step voids every outstanding plan (the group's KV state is gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from infermesh_shared.config import SchedulerConfig
from infermesh_shared.telemetry import activate_span

from infermesh_scheduler.core import migration
from infermesh_scheduler.core.errors import QueueFullError, RequestRefused
from infermesh_scheduler.core.request import RequestOutput, RequestSpec
from infermesh_scheduler.core.scheduler import Scheduler
from infermesh_scheduler.core.step_plan import StepPlan
from infermesh_scheduler.group_state import GroupEvent, GroupState
from infermesh_scheduler.plan_codec import plan_to_proto, tokens_from_proto
from infermesh_scheduler.queue_room import QueueRoom
from infermesh_scheduler.request_stream import RequestStream
from infermesh_scheduler.request_telemetry import SchedulerTelemetry
from infermesh_scheduler.status_table import status_of_end
from infermesh_scheduler.submit_rejected import SubmitRejected
from infermesh_scheduler.worker_group import WorkerGroup, WorkerGroupFailure

logger = logging.getLogger(__name__)

# While requests wait for the group to come back, deadlines are still checked this often (s).
_DEADLINE_POLL_S = 0.05
SHUTTING_DOWN = "the scheduler is shutting down; retry on another replica"
# Live requests end with INTERNAL after this many consecutive steps failed on the worker group.
_MAX_FAILED_STEPS_IN_A_ROW = 3
# Pause after an unexpected engine loop error (s).
_ERROR_BACKOFF_S = 0.1
# Health (queue depth) is re-evaluated at most this often while steps run (s).
_LOAD_REPORT_INTERVAL_S = 0.02


@dataclass(slots=True)
class _PlanInFlight:
    """A plan sent to the worker group whose results are not applied yet."""

    plan: StepPlan
    task: asyncio.Task
    started: float  # time.perf_counter() when it was sent
    span: Any  # the step's tracing span, None unless traced


class EngineLoop:
    """Owns the core Scheduler (once the worker group exists) and every live request's stream."""

    def __init__(
        self,
        settings: SchedulerConfig,
        group: WorkerGroup,
        scheduler_factory: Callable[[int, int], Scheduler],
        on_load_change: Callable[[], None],
        telemetry: SchedulerTelemetry | None = None,
    ) -> None:
        self._settings = settings
        # None when tracing and metrics are both off: the step loop then does no telemetry work.
        self._telemetry = telemetry
        self._group = group
        self._scheduler_factory = scheduler_factory
        self._on_load_change = on_load_change
        self._scheduler: Scheduler | None = None
        self._streams: dict[str, RequestStream] = {}
        self.draining = False
        # Streams of migrated-in requests nobody attached to yet; kept after the request ends
        # here too, so a request that finishes before its frontend attaches loses no token.
        self._unattached: dict[str, RequestStream] = {}
        self._wake = asyncio.Event()
        self._scheduler_ready = asyncio.Event()
        # Where Submits wait for room in a full queue (queue_overflow_policy=block).
        self._room = QueueRoom(settings.queue_timeout_ms)
        self._last_load_report = 0.0
        # The group lost its KV state since the core's worker state was last reset.
        self._worker_state_lost = False
        self._failed_steps_in_a_row = 0
        self._task: asyncio.Task[None] | None = None
        self._in_flight: deque[_PlanInFlight] = deque()
        self._last_step_done = 0.0
        # Most plans ever outstanding at once (pipelining at work when > 1).
        self.max_plans_in_flight = 0

    # ----- wiring with the worker group -------------------------------------------------
    def on_group_state(self, event: GroupEvent) -> None:
        """Called by the worker group on every change of its state."""
        if event.state is GroupState.READY and self._scheduler is None:
            # Whole for the first time, its KV cache allocated: the core is sized from it.
            num_blocks, num_cpu_blocks = self._group.num_blocks, self._group.num_cpu_blocks
            self._scheduler = self._scheduler_factory(num_blocks, num_cpu_blocks)
            self._scheduler_ready.set()
            logger.info("core scheduler built: %d KV blocks, %d CPU blocks", num_blocks, num_cpu_blocks)
        if event.lost_kv:
            self._worker_state_lost = True  # the core's worker state is reset between steps
        if self._scheduler is None and event.state.refuses_requests:
            self._scheduler_ready.set()  # wakes submits waiting for a group that will not form
        self._wake.set()
        self._on_load_change()

    # ----- API for the servicer ---------------------------------------------------------
    @property
    def scheduler(self) -> Scheduler | None:
        """The core scheduler, None until the worker group formed the first time."""
        return self._scheduler

    def start(self) -> None:
        """Starts the loop task."""
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        """Stops the loop task and ends every live stream with UNAVAILABLE."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._void_in_flight()
        self._fail_all(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def drain(self, timeout_s: float) -> None:
        """Refuses new Submits (UNAVAILABLE: the frontend places them elsewhere) and waits up to
        `timeout_s` for the live requests to finish; `stop` ends the rest, which the frontend's
        failover continues on another replica."""
        self.draining = True
        self._on_load_change()
        deadline = time.monotonic() + timeout_s
        # A broken group makes no progress: waiting for it would only delay the failover.
        while self._streams and self._group.is_ready and time.monotonic() < deadline:
            await asyncio.sleep(_DEADLINE_POLL_S)

    async def submit(
        self, spec: RequestSpec, non_blocking: bool, deadline: float | None, queue_timeout_ms: int = 0
    ) -> RequestStream:
        """Admits `spec` and returns its stream; raises SubmitRejected with the status to answer.

        `deadline` is a time.monotonic() value after which waiting for admission gives up;
        `queue_timeout_ms` (0 = the scheduler's queue_timeout_ms, itself 0 = no bound) bounds the
        wait for room in a full `block` queue (RESOURCE_EXHAUSTED past it).
        """
        if self.draining:
            raise SubmitRejected(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if spec.request_id in self._streams:
            raise SubmitRejected(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {spec.request_id!r} is already live: "
                "use a new id or Abort the old request first",
            )
        stream = RequestStream(spec.request_id)
        self._streams[spec.request_id] = stream
        queue_deadline: tuple[float, int] | None = None  # (monotonic instant, the ms it came from)
        try:
            scheduler = await self._wait_for_scheduler(deadline)
            while True:
                if self._group.state.refuses_requests:
                    raise SubmitRejected(grpc.StatusCode.UNAVAILABLE, self._group.down_message())
                if self._streams.get(spec.request_id) is not stream:
                    raise SubmitRejected(
                        grpc.StatusCode.CANCELLED, "the request was aborted before it was queued"
                    )
                try:
                    outputs = scheduler.add_request(spec)
                    break
                except QueueFullError as full:
                    if full.policy != "block" or non_blocking:
                        raise SubmitRejected.of(full) from None
                    queue_deadline = queue_deadline or self._room.queue_deadline(queue_timeout_ms)
                await self._room.wait(deadline, queue_deadline)
        except BaseException as err:
            if self._streams.get(spec.request_id) is stream:
                del self._streams[spec.request_id]
            if isinstance(err, RequestRefused):
                raise SubmitRejected.of(err) from None
            raise
        if self._telemetry is not None:
            self._telemetry.request_queued(spec)
        self._route(outputs)
        self._wake.set()
        self._on_load_change()
        return stream

    def abort(self, request_id: str) -> bool:
        """Ends a live request and frees its blocks at once (a step in flight ignores it)."""
        if request_id not in self._streams:
            return False
        self._abort_now(request_id)
        self._wake.set()
        return True

    # ----- live migration (migration_rpcs.py drives it) ----------------------------------------
    def wake(self) -> None:
        """Plans again now (e.g. a request was held for its final copy)."""
        self._wake.set()

    def adopt(self, migrated: migration.MigratedRequest, blocks: list[int]) -> None:
        """Admits a migrated request as running; its outputs wait for the attaching Submit."""
        rid = migrated.spec.request_id
        if self.draining:
            raise migration.MigrationRefused("this replica is draining: it takes no new requests")
        if rid in self._streams or self._scheduler is None:
            raise migration.MigrationRefused(f"request_id {rid!r} is already live here (or no workers yet)")
        stream = RequestStream(rid)
        migration.adopt_in(self._scheduler, migrated, blocks)
        self._streams[rid] = stream
        self._unattached[rid] = stream
        self._wake.set()
        self._on_load_change()

    def attach(self, request_id: str) -> RequestStream | None:
        """The stream of an adopted request nobody streams yet (None when there is none)."""
        return self._unattached.pop(request_id, None)

    def hand_over(self, request_id: str, address: str) -> None:
        """The request left for `address`: forget it here and end its stream with that address."""
        migration.hand_over(self._scheduler, request_id)
        stream = self._streams.pop(request_id)
        stream.moved(address)
        self._wake.set()
        self._on_load_change()

    # ----- internals --------------------------------------------------------------------
    async def _wait_for_scheduler(self, deadline: float | None) -> Scheduler:
        if self._scheduler is not None:
            return self._scheduler
        if self._group.state.refuses_requests:
            raise SubmitRejected(grpc.StatusCode.UNAVAILABLE, self._group.down_message())
        timeout = self._settings.group_recovery_timeout_ms / 1000
        deadline_first = deadline is not None and deadline - time.monotonic() < timeout
        if deadline_first:
            timeout = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._scheduler_ready.wait(), timeout)
        except asyncio.TimeoutError:
            if deadline_first:
                raise SubmitRejected(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the request's deadline passed while the scheduler waited for its worker group to start",
                ) from None
            raise SubmitRejected(grpc.StatusCode.UNAVAILABLE, self._group.down_message()) from None
        if self._scheduler is None:  # woken because the group can never form as configured
            raise SubmitRejected(grpc.StatusCode.UNAVAILABLE, self._group.down_message())
        return self._scheduler

    def _abort_now(self, request_id: str) -> None:
        if self._scheduler is not None:
            self._route(self._scheduler.abort_request(request_id))
        stream = self._streams.pop(request_id, None)
        if stream is not None and not stream.closed:
            # The core did not answer with a last output (e.g. it never saw the request).
            stream.fail(grpc.StatusCode.CANCELLED, f"request {request_id!r} was aborted")
        self._room.signal()
        self._on_load_change()

    def _route(self, outputs: Iterable[RequestOutput]) -> None:
        if self._telemetry is not None:
            outputs = list(outputs)
            self._telemetry.outputs_routed(outputs)
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.error is not None:
                code, message = status_of_end(output.error)
                stream.fail(code, message)
            else:
                stream.push(output)
            if stream.closed:
                del self._streams[output.request_id]

    def _fail_all(self, code: grpc.StatusCode, message: str) -> None:
        for request_id in list(self._streams):
            if self._scheduler is not None:
                self._scheduler.abort_request(request_id)  # frees blocks; its outputs are replaced by `code`
            stream = self._streams.pop(request_id)
            if not stream.closed:
                stream.fail(code, message)
        self._room.signal()
        self._on_load_change()

    def _between_steps(self) -> None:
        """Applies what must not happen while a plan runs: resets, group-down failures, deadlines."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        if self._worker_state_lost:
            self._worker_state_lost = False
            self._void_in_flight()
            scheduler.reset_worker_state()
            logger.warning("worker group lost its KV cache: every live sequence will be recomputed")
        if self._group.state.refuses_requests and self._streams:
            self._fail_all(grpc.StatusCode.UNAVAILABLE, self._group.down_message())
        expired = scheduler.expire_deadlines()
        if expired:
            self._route(expired)
            self._room.signal()

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._iteration()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug must not silently kill the loop: fail loudly, go on
                logger.exception("engine loop error; failing live requests and rebuilding worker state")
                self._void_in_flight()
                self._fail_all(
                    grpc.StatusCode.INTERNAL, f"scheduler internal error: {err!r}; retry the request"
                )
                if self._scheduler is not None:
                    self._scheduler = self._scheduler_factory(
                        self._group.num_blocks, self._group.num_cpu_blocks
                    )
                self._group.report_failure(f"engine loop error {err!r}")
                await asyncio.sleep(_ERROR_BACKOFF_S)  # a repeating bug must not flood the log

    async def _iteration(self) -> None:
        self._between_steps()
        scheduler = self._scheduler
        if scheduler is None or self._group.state is not GroupState.READY:
            self._void_in_flight()  # the group broke: they fail or their results are void
            await self._sleep_until_woken(_DEADLINE_POLL_S if self._streams else None)
            return
        if not scheduler.has_work() and not self._in_flight:
            self._on_load_change()
            await self._sleep_until_woken(None)
            return
        while len(self._in_flight) < scheduler.config.max_inflight_plans and scheduler.has_work():
            plan = scheduler.schedule()
            if plan.is_empty():
                # Nothing fits (no free block) or everything runnable is in flight already.
                scheduler.update(plan, [])
                break
            self._send(scheduler, plan)
        if not self._in_flight:
            await self._sleep_until_woken(self._settings.idle_sleep_ms / 1000)  # wait for a change
            return
        await self._finish_oldest(scheduler)

    def _send(self, scheduler: Scheduler, plan: StepPlan) -> None:
        telemetry = self._telemetry
        # The step's span (None unless traced) is current around Execute: worker spans are its children.
        step_span = telemetry.step_started(scheduler, plan) if telemetry is not None else None
        with activate_span(step_span):  # the task copies the current context, span included
            task = asyncio.create_task(
                self._group.execute(plan_to_proto(plan)), name=f"execute-step-{plan.step_id}"
            )
        self._in_flight.append(_PlanInFlight(plan, task, time.perf_counter(), step_span))
        self.max_plans_in_flight = max(self.max_plans_in_flight, len(self._in_flight))

    def _void_in_flight(self) -> None:
        """Drops every outstanding plan: the group failed, so their results can no longer be applied."""
        while self._in_flight:
            entry = self._in_flight.popleft()
            if entry.task.done():
                if not entry.task.cancelled():
                    entry.task.exception()  # retrieved: it failed with the group or is void anyway
            else:
                entry.task.cancel()
            if self._telemetry is not None:
                self._telemetry.step_ended(
                    entry.span, time.perf_counter() - entry.started, "voided by a worker group failure"
                )

    async def _finish_oldest(self, scheduler: Scheduler) -> None:
        """Waits for the oldest outstanding plan and applies its tokens (results apply in plan order)."""
        telemetry = self._telemetry
        entry = self._in_flight[0]
        plan, started, step_span = entry.plan, entry.started, entry.span
        try:
            sampled = tokens_from_proto(await entry.task)
        except WorkerGroupFailure as failure:
            self._in_flight.popleft()
            if telemetry is not None:
                telemetry.step_ended(step_span, time.perf_counter() - started, str(failure))
            logger.warning("step %d not run: %s", plan.step_id, failure)
            self._void_in_flight()
            scheduler.reset_worker_state()
            self._worker_state_lost = False
            self._failed_steps_in_a_row += 1
            if self._failed_steps_in_a_row >= _MAX_FAILED_STEPS_IN_A_ROW:
                # The same work keeps failing (a worker error, not a lost worker): end it rather
                # than reload the group forever.
                self._failed_steps_in_a_row = 0
                self._fail_all(
                    grpc.StatusCode.INTERNAL,
                    f"the worker group failed {_MAX_FAILED_STEPS_IN_A_ROW} steps in a row running this "
                    f"request; last error: {failure}",
                )
            return
        self._in_flight.popleft()
        self._failed_steps_in_a_row = 0
        outputs = scheduler.update(plan, sampled)
        done = time.perf_counter()
        # Pipelined, a plan also waits for the ones before it: the step's own time starts when
        # the previous one finished (or when it was sent, if later).
        scheduler.record_step_time(plan, done - max(started, self._last_step_done))
        self._last_step_done = done
        if telemetry is not None:
            telemetry.step_ended(step_span, done - started)
        self._route(outputs)
        if self._room.waiters and scheduler.has_queue_room():
            self._room.signal()
        if started - self._last_load_report > _LOAD_REPORT_INTERVAL_S:
            self._last_load_report = started
            self._on_load_change()
