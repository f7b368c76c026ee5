"""Hypothesis drives the scheduler through random arrivals, aborts, steps, worker resets and
tiny pools, checking the block bookkeeping after every rule and the outputs at the end.

With max_inflight_plans K > 1 up to K plans are outstanding: the simulated workers run each plan
when it is scheduled (workers run plans in order) and its update() comes later, oldest first, so
aborts, deadlines, preemption and resets all happen with plans in flight. A second simulated
worker plays a non-sampling pipeline stage that learns tokens only from later plans."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from infermesh_scheduler.core import (
    EndReason,
    FinishReason,
    InvalidRequestError,
    PriorityClass,
    QueueFullError,
    Scheduler,
)

from tests.scheduler_core.builders import assert_all_blocks_free, make_config, make_spec
from tests.scheduler_core.simulated_worker import SimulatedWorker

PREFIXES = [[7, 8, 9, 10, 11, 12, 13, 14], [21, 22, 23, 24, 25, 26], [31, 32, 33]]


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        block_size=st.sampled_from([2, 4]),
        num_blocks=st.integers(6, 24),
        max_batch_size=st.integers(1, 6),
        max_tokens_per_step=st.integers(4, 64),
        policy=st.sampled_from(["continuous", "priority", "fair", "edf", "lrs"]),
        enable_prefix_cache=st.booleans(),
        cache_blocks=st.integers(1, 30),
        enable_cow=st.booleans(),
        enable_preemption=st.booleans(),
        threshold=st.integers(0, 2),
        enable_swap=st.booleans(),
        num_cpu_blocks=st.integers(1, 20),
        chunked_prefill=st.sampled_from(["fixed", "dynamic"]),
        chunk_size=st.integers(1, 16),
        max_queue_size=st.integers(1, 8),
        overflow=st.sampled_from(["block", "drop_newest", "drop_oldest"]),
        max_inflight_plans=st.sampled_from([1, 2, 3]),
    )
    def setup(self, block_size, num_blocks, cache_blocks, threshold, enable_swap, num_cpu_blocks, **kw):
        self.config = make_config(
            block_size=block_size,
            num_blocks=num_blocks,
            max_model_len=48,
            prefix_cache_capacity=cache_blocks * block_size,
            preemption_threshold=min(threshold, num_blocks - 1),
            enable_swap=enable_swap,
            num_cpu_blocks=num_cpu_blocks if enable_swap else 0,
            min_chunk_size=1,
            max_chunk_size=16,
            queue_overflow_policy=kw.pop("overflow"),
            **kw,
        )
        self.clock_now = 1000.0
        self.sched = Scheduler(self.config, clock=lambda: self.clock_now)
        self.worker = SimulatedWorker(block_size, num_blocks, self.config.num_cpu_blocks)
        self.stage0 = None
        if self.config.max_inflight_plans > 1:
            self.stage0 = SimulatedWorker(
                block_size, num_blocks, self.config.num_cpu_blocks, samples_itself=False
            )
        self.pending = []  # (plan, sampled tokens) run by the workers, update() not applied yet
        self.mid_step = False
        self.next_id = 0
        self.specs = {}
        self.live: set[str] = set()
        self.ended: set[str] = set()  # aborted or dropped: outputs may be partial
        self.tokens: dict[tuple[str, int], list[int]] = {}
        self.finish: dict[tuple[str, int], FinishReason] = {}
        self.usage_seen: set[str] = set()
        self.arrival: list[str] = []
        self.started: set[str] = set()

    def _take(self, outputs) -> None:
        for out in outputs:
            key = (out.request_id, out.index)
            assert key not in self.finish, f"output after the end of {key}"
            self.tokens.setdefault(key, []).extend(out.new_token_ids)
            if out.finish_reason is not None:
                self.finish[key] = out.finish_reason
            if out.usage is not None:
                assert out.request_id not in self.usage_seen
                self.usage_seen.add(out.request_id)
                self.live.discard(out.request_id)
            if out.error is not None:
                assert out.error.reason in (EndReason.DROPPED_FOR_NEWER, EndReason.DEADLINE)
                self.ended.add(out.request_id)

    @rule(
        prefix=st.integers(0, len(PREFIXES)),
        suffix=st.lists(st.integers(1, 49), max_size=10),
        max_tokens=st.integers(1, 12),
        priority=st.integers(0, 2),
        latency=st.booleans(),
        n=st.integers(1, 3),
        client=st.sampled_from(["a", "b", "c"]),
        ignore_eos=st.booleans(),
        timeout_s=st.one_of(st.none(), st.floats(0.0, 10.0)),
    )
    def add(self, prefix, suffix, max_tokens, priority, latency, n, client, ignore_eos, timeout_s):
        prompt = (PREFIXES[prefix] if prefix < len(PREFIXES) else []) + suffix
        if not prompt:
            prompt = [5]
        rid = f"r{self.next_id}"
        self.next_id += 1
        spec = make_spec(
            rid,
            prompt,
            max_tokens,
            priority=priority,
            priority_class=PriorityClass.LATENCY_CRITICAL if latency else PriorityClass.THROUGHPUT,
            client_id=client,
            n=n,
            ignore_eos=ignore_eos,
            timeout_s=timeout_s,
            arrival_time=self.clock_now,
        )
        try:
            dropped = self.sched.add_request(spec)
        except InvalidRequestError as err:
            assert n > 1 and not self.config.enable_cow or "KV blocks" in str(err), str(err)
            return
        except QueueFullError as err:
            assert err.policy in ("block", "drop_newest") and err.policy in err.message
            assert not self.sched.has_queue_room()
            return
        self._take(dropped)
        for out in dropped:
            assert out.finish_reason is FinishReason.ABORT and "drop_oldest" in out.error.message
        self.specs[rid] = spec
        self.live.add(rid)
        self.arrival.append(rid)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def abort(self, data):
        rid = data.draw(st.sampled_from(sorted(self.live)))
        outputs = self.sched.abort_request(rid)
        assert outputs and all(o.finish_reason is FinishReason.ABORT for o in outputs)
        self.ended.add(rid)
        self._take(outputs)
        assert self.sched.abort_request(rid) == []

    def _complete_oldest(self):
        plan, sampled = self.pending.pop(0)
        self._take(self.sched.update(plan, sampled))

    @precondition(lambda self: self.pending)
    @rule()
    def complete(self):
        self._complete_oldest()

    @rule()
    def step(self):
        self.clock_now += 0.01
        if len(self.pending) >= self.config.max_inflight_plans:
            self._complete_oldest()
            self.last_plan_did_work = True
            return
        self.mid_step = True
        plan = self.sched.schedule()
        cfg = self.config
        assert plan.num_scheduled_tokens() <= cfg.max_tokens_per_step
        batch = len(plan.new_sequences) + len(plan.running_sequences)
        assert batch <= cfg.max_batch_size
        ids = [s.seq_id for s in plan.new_sequences] + [s.seq_id for s in plan.running_sequences]
        assert len(ids) == len(set(ids))
        assert not (plan.swap_in and plan.swap_out)
        self._check_admission_order(plan)
        in_flight = {s.seq_id for p, _ in self.pending for s in p.running_sequences + p.new_sequences}
        assert not in_flight & set(ids), "a sequence was scheduled while an earlier plan held it"
        self.last_plan_did_work = not plan.is_empty() or bool(self.pending)
        self.sched.record_step_time(plan, 0.001 + 0.0001 * plan.num_scheduled_tokens())
        if plan.is_empty() and self.pending:
            assert self.sched.update(plan, []) == []  # nothing ran: not an outstanding plan
            self._complete_oldest()
        else:
            sampled = self.worker.execute(plan)
            if self.stage0 is not None:
                self.stage0.execute(plan)
            self.pending.append((plan, sampled))
            if self.config.max_inflight_plans == 1:
                self._complete_oldest()
        self.mid_step = False

    def _check_admission_order(self, plan) -> None:
        req_of = {
            s.seq_id: s.request.spec.request_id for r in self.sched._requests.values() for s in r.sequences
        }
        firsts = [req_of[n.seq_id] for n in plan.new_sequences if n.seq_id in req_of]
        for rid in firsts:
            self.started.add(rid)
        if self.config.policy != "continuous":
            return
        for rid in firsts:
            cls = self.specs[rid].priority_class
            for earlier in self.arrival[: self.arrival.index(rid)]:
                if self.specs[earlier].priority_class == cls and earlier in self.live:
                    assert earlier in self.started, f"{rid} started before earlier {earlier}"

    @rule(ahead=st.floats(0.0, 12.0))
    def expire(self, ahead):
        now = self.clock_now + ahead
        outputs = self.sched.expire_deadlines(now)
        for out in outputs:
            assert out.error.reason is EndReason.DEADLINE and out.finish_reason is FinishReason.ABORT
            spec = self.specs[out.request_id]
            assert spec.arrival_time + spec.timeout_s < now
        self._take(outputs)

    @precondition(lambda self: self.next_id % 7 == 3)
    @rule()
    def worker_restart(self):
        self.sched.reset_worker_state()
        self.worker.reset()
        if self.stage0 is not None:
            self.stage0.reset()
        for plan, _ in self.pending:
            assert self.sched.update(plan, []) == []  # void: run before the reset
        self.pending = []

    @invariant()
    def consistent(self):
        self.sched.check_invariants()

    def teardown(self):
        if self.mid_step:
            return  # a rule already failed mid-step; draining would only hide its error
        idle_plans = 0
        for _ in range(3000):
            if (not self.sched.has_work() and not self.pending) or idle_plans > 50:
                break
            self.step()
            idle_plans = 0 if self.last_plan_did_work else idle_plans + 1
        assert not self.sched.has_work(), "scheduler did not drain"
        assert_all_blocks_free(self.sched)
        for rid, spec in self.specs.items():
            if rid in self.ended:
                continue
            assert rid in self.usage_seen, f"{rid} never finished"
            for index in range(spec.sampling.n):
                got = self.tokens.get((rid, index), [])
                reason = self.finish[(rid, index)]
                assert 1 <= len(got) <= spec.sampling.max_tokens
                history = list(spec.prompt_token_ids)
                for token in got:  # what an undisturbed greedy run produces
                    assert token == self.worker.next_token(history), f"{rid}/{index} diverged"
                    history.append(token)
                if reason is FinishReason.LENGTH:
                    assert len(got) == spec.sampling.max_tokens
                else:
                    assert reason is FinishReason.STOP and got[-1] == 0 and not spec.sampling.ignore_eos


SchedulerMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
