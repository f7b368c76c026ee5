"""The discrete-event loop: arrivals at frontends, routing, admission at replicas, worker steps and
load polls, in virtual-time order. Nothing sleeps; the clock jumps from one event to the next."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from infermesh_scheduler.core.errors import EndReason, RequestRefused
from infermesh_scheduler.core.request import PriorityClass, RequestSpec, SamplingOptions
from infermesh_scheduler.status_table import END_STATUS, REFUSAL_STATUS

from infermesh_cli.simulate.sim_config import SimConfig
from infermesh_cli.simulate.sim_frontend import SimFrontend
from infermesh_cli.simulate.sim_replica import SimReplica
from infermesh_cli.simulate.workload import SimRequest, generate

# Event kinds; at equal times a step's end is applied before new work arrives, then polls.
_STEP_DONE, _SUBMIT, _ARRIVAL, _POLL = 0, 1, 2, 3
# Per-replica load is kept for at most this many poll ticks (the plots' time resolution).
_MAX_SERIES_POINTS = 2000


@dataclass(slots=True)
class RequestRecord:
    """One request's fate, in client-side virtual seconds (NaN: did not happen)."""

    index: int
    arrival_s: float
    prompt_len: int
    output_len: int
    klass: str
    prefix_group: int
    replica: int = -1
    first_token_s: float = math.nan
    finish_s: float = math.nan
    output_tokens: int = 0
    cached_prompt_tokens: int = 0
    error: str = ""


@dataclass(slots=True)
class SimResult:
    records: list[RequestRecord]
    replicas: list[SimReplica]
    simulated_s: float
    wall_s: float
    # Wall seconds per component.
    wall_breakdown: dict[str, float]
    # Poll-tick times and, per tick, each replica's (requests, KV blocks in use) and the cluster's queue.
    series_t: list[float] = field(default_factory=list)
    series_requests: list[list[int]] = field(default_factory=list)
    series_kv_used: list[list[float]] = field(default_factory=list)
    series_waiting: list[int] = field(default_factory=list)
    unfinished: int = 0
    leaked_blocks: int = 0


class Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.now = 0.0
        clock = self._clock
        law = config.law
        rtt = 2 * config.scheduler_worker_s
        every = config.check_invariants_every
        self.replicas = [
            SimReplica(i, config.scheduler, clock, law, rtt, every) for i in range(config.cluster.replicas)
        ]
        self._by_address = {r.address: r for r in self.replicas}
        addresses = [r.address for r in self.replicas]
        self.frontends = [
            SimFrontend(i, config.cluster.dispatch_policy, config.scheduler.block_size, addresses)
            for i in range(config.cluster.frontends)
        ]
        self._events: list[tuple] = []
        self._seq = 0
        self._records: dict[str, tuple[RequestRecord, SimFrontend, SimReplica]] = {}
        self._done: list[RequestRecord] = []
        # Called with (simulated s, requests so far, wall s) every tenth of the duration.
        self.progress: Callable[[float, int, float], None] | None = None

    def _clock(self) -> float:
        return self.now

    def _push(self, when: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, kind, self._seq, payload))

    def run(self) -> SimResult:
        cfg = self.config
        wall_start = time.perf_counter()
        core_s = routing_s = polling_s = 0.0
        perf = time.perf_counter
        hop_in = cfg.frontend_scheduler_s
        hop_out = cfg.frontend_scheduler_s + cfg.client_frontend_s
        poll_s = cfg.cluster.load_poll_interval_ms / 1000.0
        arrivals = generate(cfg.workload, cfg.scheduler.max_model_len)
        result = SimResult([], self.replicas, 0.0, 0.0, {})
        every_tick = max(1, math.ceil(cfg.workload.duration_s / poll_s / _MAX_SERIES_POINTS))
        ticks = 0
        report_every = cfg.workload.duration_s / 10
        next_report = report_every
        stop_at = cfg.workload.duration_s + cfg.max_drain_s

        t0 = perf()
        self._poll(result, record=True)  # every frontend knows every replica before the first request
        polling_s += perf() - t0
        self._push(poll_s, _POLL, None)
        first = next(arrivals, None)
        if first is not None:
            self._push(first.arrival_s + cfg.client_frontend_s, _ARRIVAL, first)
        arriving = first is not None
        in_transit = 0  # requests routed, not yet at their replica
        events = self._events
        pop = heapq.heappop
        frontends = self.frontends
        num_frontends = len(frontends)
        records = self._records
        while events:
            when, kind, _, payload = pop(events)
            if when > stop_at:
                break
            self.now = when
            if kind == _STEP_DONE:
                replica: SimReplica = payload  # type: ignore[assignment]
                t0 = perf()
                outputs = replica.finish_step()
                duration = replica.start_step() if replica.scheduler.has_work() else None
                core_s += perf() - t0
                if duration is not None:
                    self._push(when + duration, _STEP_DONE, replica)
                for out in outputs:
                    entry = records.get(out.request_id)
                    if entry is None:
                        continue
                    record = entry[0]
                    if out.new_token_ids:
                        if record.output_tokens == 0:
                            record.first_token_s = when + hop_out
                        record.output_tokens += len(out.new_token_ids)
                    if out.usage is not None:
                        record.finish_s = when + hop_out
                        record.cached_prompt_tokens = out.usage.cached_prompt_tokens
                        if out.error is not None:
                            record.error = END_STATUS[out.error.reason].name
                        entry[1].finish_at(when + hop_in, replica.address)
                        del records[out.request_id]
            elif kind == _ARRIVAL:
                request: SimRequest = payload  # type: ignore[assignment]
                frontend = frontends[request.index % num_frontends]
                t0 = perf()
                frontend.catch_up(when)
                address = frontend.pick(request.prompt_token_ids)
                routing_s += perf() - t0
                record = RequestRecord(
                    request.index,
                    request.arrival_s,
                    len(request.prompt_token_ids),
                    request.output_len,
                    request.klass.name,
                    request.prefix_group,
                )
                self._done.append(record)
                if address is None:
                    record.error = "UNAVAILABLE"
                else:
                    replica = self._by_address[address]
                    record.replica = replica.index
                    if hop_in:
                        in_transit += 1
                        self._push(when + hop_in, _SUBMIT, (request, record, frontend, replica))
                    else:
                        core_s += self._submit(request, record, frontend, replica)
                nxt = next(arrivals, None)
                if nxt is None:
                    arriving = False
                else:
                    self._push(nxt.arrival_s + cfg.client_frontend_s, _ARRIVAL, nxt)
            elif kind == _SUBMIT:
                request, record, frontend, replica = payload  # type: ignore[misc]
                in_transit -= 1
                core_s += self._submit(request, record, frontend, replica)
            else:
                ticks += 1
                if self.progress is not None and when >= next_report:
                    next_report += report_every
                    self.progress(when, len(self._done), perf() - wall_start)
                t0 = perf()
                self._poll(result, record=ticks % every_tick == 0)
                polling_s += perf() - t0
                if arriving or in_transit or records:
                    self._push(when + poll_s, _POLL, None)
        result.wall_s = perf() - wall_start
        result.simulated_s = self.now
        result.records = self._done
        result.unfinished = len(records)
        result.leaked_blocks = self._final_checks(not records)
        result.wall_breakdown = {
            "replica_steps": core_s,
            "routing": routing_s,
            "load_polls": polling_s,
            "event_loop_and_bookkeeping": max(0.0, result.wall_s - core_s - routing_s - polling_s),
        }
        return result

    def _submit(
        self, request: SimRequest, record: RequestRecord, frontend: SimFrontend, replica: SimReplica
    ) -> float:
        """Hands the request to the replica's core (starting a step if it was idle); returns wall
        seconds spent in the core."""
        t0 = time.perf_counter()
        klass = request.klass
        spec = RequestSpec(
            request_id=f"r{request.index}",
            prompt_token_ids=request.prompt_token_ids,
            sampling=SamplingOptions.greedy(request.output_len, ignore_eos=True),
            priority=klass.priority,
            priority_class=PriorityClass.LATENCY_CRITICAL
            if klass.latency_critical
            else PriorityClass.THROUGHPUT,
            timeout_s=None,
            client_id=klass.name,
            arrival_time=self.now,
        )
        try:
            dropped = replica.scheduler.add_request(spec)
        except RequestRefused as refused:
            record.error = REFUSAL_STATUS[refused.reason].name
        else:
            replica.requests += 1
            self._records[spec.request_id] = (record, frontend, replica)
            for out in dropped:  # drop_oldest ended another request to make room
                entry = self._records.pop(out.request_id, None)
                if entry is not None and out.usage is not None:
                    entry[0].error = END_STATUS[EndReason.DROPPED_FOR_NEWER].name
                    entry[0].finish_s = self.now
                    entry[1].finish_at(self.now + self.config.frontend_scheduler_s, replica.address)
            if replica.plan is None:
                duration = replica.start_step()
                if duration is not None:
                    self._push(self.now + duration, _STEP_DONE, replica)
        if record.error:
            frontend.finish_at(self.now + self.config.frontend_scheduler_s, replica.address)
        return time.perf_counter() - t0

    def _poll(self, result: SimResult, record: bool) -> None:
        """Every frontend polls every replica (GetLoad) at the same tick; one report per replica."""
        now = self.now
        frontends = self.frontends
        for frontend in frontends:
            frontend.catch_up(now)
        requests: list[int] = []
        kv_used: list[float] = []
        waiting = 0
        for replica in self.replicas:
            snapshot, report = replica.report()
            for frontend in frontends:
                frontend.apply_report(replica.address, report)
            if record:
                requests.append(snapshot.num_waiting + snapshot.num_running + snapshot.num_preempted)
                used = snapshot.total_blocks - snapshot.free_blocks - snapshot.cached_blocks
                kv_used.append(used / snapshot.total_blocks)
                waiting += snapshot.num_waiting
        if record:
            result.series_t.append(now)
            result.series_requests.append(requests)
            result.series_kv_used.append(kv_used)
            result.series_waiting.append(waiting)

    def _final_checks(self, drained: bool) -> int:
        """Runs every core's invariant checks; after a full drain, returns KV blocks still held."""
        leaked = 0
        for replica in self.replicas:
            replica.scheduler.check_invariants()
            if drained:
                load = replica.scheduler.load()
                leaked += load.total_blocks - load.free_blocks - load.cached_blocks
        return leaked
