"""The rescheduler loop (seed 001): every rescheduling_interval_ms, while its lease says it is the
active one, it reads GetLoad (with the request lists) from every scheduler replica, plans a round
(round_plan.py) and asks each source replica to Migrate the chosen requests.

Bounds, so a round cannot thrash the cluster:
- at most rescheduling_max_migrations_per_replica migrations in flight per replica (as source or
  destination); a request is never in two migrations;
- a request that moved (or failed to) is not balanced again for rescheduling_request_cooldown_ms
  (a drain or failover still moves it: its replica is being emptied);
- after a move A -> B, nothing moves B -> A within that cooldown (no ping-pong).
Migrations run in the background, so a slow one does not stretch the interval; each call is
bounded by llumlet_grpc_timeout_seconds, and a lost lease stops new moves at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from infermesh.v1 import scheduler_pb2
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as MetricCounter

from infermesh_frontend.rescheduling.lease import NoLease
from infermesh_frontend.rescheduling.migration_call import migrate
from infermesh_frontend.rescheduling.round_plan import DECODE_LOAD, Move, plan_round

logger = logging.getLogger(__name__)

# address -> SchedulerServiceStub of every replica discovery knows now.
StubSource = Callable[[], Mapping[str, Any]]


class ReschedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge(
            "infermesh_rescheduler_active",
            "1 while this rescheduler holds the lease and acts.",
            registry=registry,
        )
        self.rounds = MetricCounter(
            "infermesh_rescheduler_rounds", "Rescheduling rounds run while active.", registry=registry
        )
        self.moves = MetricCounter(
            "infermesh_rescheduler_migrations",
            "Migrations the rescheduler asked for, by policy (drain, neutral_failover, decode_load) "
            "and outcome (migrated, failed).",
            ["policy", "outcome"],
            registry=registry,
        )


class Rescheduler:
    def __init__(
        self,
        options: Any,
        stubs: StubSource,
        lease: Any = None,
        metrics: ReschedulerMetrics | None = None,
    ) -> None:
        """`options`: a rescheduling_config section (frontend's or infermesh-rescheduler's)."""
        self.options = options
        self._stubs = stubs
        self.lease = lease or NoLease()
        self._metrics = metrics
        self._timeout_s = float(options.llumlet_grpc_timeout_seconds)
        self._cooldown_s = options.rescheduling_request_cooldown_ms / 1000
        self._in_flight: dict[str, Move] = {}
        self._per_replica: Counter[str] = Counter()
        self._cooling: dict[str, float] = {}  # request id -> monotonic time it may move again
        self._recent_pairs: dict[tuple[str, str], float] = {}  # (source, destination) -> until
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        # Every outcome, newest last (bounded): what tests and logs read.
        self.history: list[tuple[Move, bool, str]] = []

    # ----- lifecycle
    async def start(self) -> None:
        await self.lease.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="rescheduler")
        logger.info(
            "rescheduler started: policies %s every %d ms (lease: %s)",
            ",".join(self.options.rescheduling_policies),
            self.options.rescheduling_interval_ms,
            type(self.lease).__name__,
        )

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._timeout_s)
        await self.lease.stop()

    async def _run(self) -> None:
        interval_s = self.options.rescheduling_interval_ms / 1000
        while True:
            began = time.monotonic()
            try:
                await self.run_round()
            except Exception:  # a bad round must not end rescheduling
                logger.exception("rescheduling round failed")
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))

    # ----- one round
    async def run_round(self) -> list[Move]:
        """Reads the loads and starts the moves of one round; returns the moves started."""
        active = self.lease.active()
        if self._metrics is not None:
            self._metrics.active.set(1 if active else 0)
        if not active:
            return []
        reports = await self.read_loads()
        if not self.lease.active():
            return []  # lost while reading: act on nothing
        now = time.monotonic()
        self._expire(now)
        started = []
        for move in plan_round(reports, self.options, self._eligible):
            if not self._admit(move, now):
                continue
            stub = self._stubs().get(move.source)
            if stub is None or not self.lease.active():
                continue
            self._begin(move)
            task = asyncio.get_running_loop().create_task(self._migrate(stub, move))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(move)
        if self._metrics is not None:
            self._metrics.rounds.inc()
        return started

    async def read_loads(self) -> dict[str, scheduler_pb2.GetLoadResponse]:
        """GetLoad with request lists from every replica that answers within the timeout."""
        stubs = dict(self._stubs())
        request = scheduler_pb2.GetLoadRequest(include_requests=True)
        answers = await asyncio.gather(
            *(stub.GetLoad(request, timeout=self._timeout_s) for stub in stubs.values()),
            return_exceptions=True,
        )
        reports = {}
        for address, answer in zip(stubs, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                logger.debug("GetLoad of %s failed: %s", address, answer.code())
            elif isinstance(answer, BaseException):
                raise answer
            else:
                reports[address] = answer
        return reports

    # ----- bounds
    def _eligible(self, request_id: str, policy: str) -> bool:
        if request_id in self._in_flight:
            return False
        # A replica being emptied is emptied, even of a request that just arrived there.
        return policy != DECODE_LOAD or request_id not in self._cooling

    def _admit(self, move: Move, now: float) -> bool:
        limit = self.options.rescheduling_max_migrations_per_replica
        if not self._eligible(move.request_id, move.policy):
            return False
        if self._per_replica[move.source] >= limit or self._per_replica[move.destination] >= limit:
            return False
        # A drain empties its replica whatever moved in lately; balancing must not undo a move.
        return move.policy != DECODE_LOAD or (move.destination, move.source) not in self._recent_pairs

    def _begin(self, move: Move) -> None:
        self._in_flight[move.request_id] = move
        self._per_replica[move.source] += 1
        self._per_replica[move.destination] += 1

    def _expire(self, now: float) -> None:
        self._cooling = {rid: until for rid, until in self._cooling.items() if until > now}
        self._recent_pairs = {pair: until for pair, until in self._recent_pairs.items() if until > now}

    async def _migrate(self, stub: Any, move: Move) -> None:
        try:
            outcome = await migrate(stub, move.request_id, move.destination, self._timeout_s)
        finally:
            del self._in_flight[move.request_id]
            for address in (move.source, move.destination):
                self._per_replica[address] -= 1
                if not self._per_replica[address]:
                    del self._per_replica[address]
        until = time.monotonic() + self._cooldown_s
        self._cooling[move.request_id] = until
        if outcome.migrated:
            self._recent_pairs[(move.source, move.destination)] = until
            logger.info(
                "%s: %s moved %s -> %s (paused %.1f ms)",
                move.policy,
                move.request_id,
                move.source,
                move.destination,
                outcome.downtime_s * 1e3,
            )
        else:
            logger.info("%s: %s stays on %s: %s", move.policy, move.request_id, move.source, outcome.reason)
        if self._metrics is not None:
            self._metrics.moves.labels(
                policy=move.policy, outcome="migrated" if outcome.migrated else "failed"
            ).inc()
        self.history.append((move, outcome.migrated, outcome.reason))
        del self.history[:-1000]

    async def wait_idle(self) -> None:
        """Waits for the migrations in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))
