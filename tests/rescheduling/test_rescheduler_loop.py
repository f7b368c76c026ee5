"""The rescheduler loop against hand-built replicas: it asks the source to Migrate what the plan
chose, within its bounds (per-replica concurrency, cooldown, no ping-pong), only while active."""

from __future__ import annotations

import asyncio

from infermesh_frontend.rescheduling.rescheduler import Rescheduler

from tests.rescheduling.fakes import FakeReplica, options, report


class _Lease:
    def __init__(self) -> None:
        self.on = True

    def active(self) -> bool:
        return self.on

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _cluster(**opts):
    a = FakeReplica(report(*[(f"r{i}", 10 * (i + 1), 1) for i in range(6)], projected=1.5))
    b = FakeReplica(report(projected=0.1))
    replicas = {"a:1": a, "b:1": b}
    lease = _Lease()
    values = {"rescheduling_req_select_rule": "NUM_REQ", "rescheduling_req_select_value": 6}
    values.update(opts)
    return Rescheduler(options(**values), lambda: replicas, lease), a, b, lease


def test_a_round_asks_the_source_to_migrate_at_most_the_per_replica_bound():
    async def scenario():
        rescheduler, a, b, _ = _cluster(rescheduling_max_migrations_per_replica=2)
        a.hold = asyncio.Event()
        started = await rescheduler.run_round()
        assert [m.request_id for m in started] == ["r0", "r1"]
        assert await rescheduler.run_round() == []  # both slots still busy
        a.hold.set()
        await rescheduler.wait_idle()
        assert a.calls == [("r0", "b:1"), ("r1", "b:1")]
        started = await rescheduler.run_round()  # r0, r1 cool down: the next two go
        assert [m.request_id for m in started] == ["r2", "r3"]
        await rescheduler.wait_idle()
        assert [moved for _, moved, _ in rescheduler.history] == [True] * 4

    asyncio.run(scenario())


def test_no_ping_pong_and_no_second_move_of_a_request_within_the_cooldown():
    async def scenario():
        rescheduler, a, b, _ = _cluster(rescheduling_max_migrations_per_replica=8)
        await rescheduler.run_round()
        await rescheduler.wait_idle()
        assert len(a.calls) == 6
        # The loads flip: b is now the loaded one, holding what came from a.
        a.load = report(projected=0.1)
        b.load = report(*[(f"r{i}", 10, 1) for i in range(6)], ("b-own", 10, 1), projected=1.5)
        assert await rescheduler.run_round() == []  # b -> a right after a -> b: refused
        assert b.calls == []

    asyncio.run(scenario())


def test_a_failed_migration_cools_the_request_down_too():
    async def scenario():
        rescheduler, a, _, _ = _cluster(rescheduling_req_select_value=1)
        a.migrated = False
        await rescheduler.run_round()
        await rescheduler.wait_idle()
        await rescheduler.run_round()
        await rescheduler.wait_idle()
        assert [rid for rid, _ in a.calls] == ["r0", "r1"]
        assert rescheduler.history[0][1:] == (False, "refused for the test")

    asyncio.run(scenario())


def test_an_inactive_rescheduler_reads_nothing_and_moves_nothing():
    async def scenario():
        rescheduler, a, _, lease = _cluster()
        lease.on = False
        assert await rescheduler.run_round() == []
        assert a.calls == []
        lease.on = True
        assert await rescheduler.run_round()

    asyncio.run(scenario())


def test_an_unreachable_replica_is_left_out_of_the_round():
    async def scenario():
        rescheduler, a, b, _ = _cluster()
        b.unreachable = True
        assert await rescheduler.run_round() == []  # no destination answered
        b.unreachable = False
        a.unreachable = True
        assert await rescheduler.run_round() == []

    asyncio.run(scenario())


def test_the_loop_runs_every_interval_until_stopped():
    async def scenario():
        rescheduler, a, _, _ = _cluster(rescheduling_interval_ms=10, rescheduling_req_select_value=1)
        await rescheduler.start()
        for _ in range(500):
            if len(a.calls) >= 3:
                break
            await asyncio.sleep(0.01)
        await rescheduler.stop()
        assert [rid for rid, _ in a.calls[:3]] == ["r0", "r1", "r2"]

    asyncio.run(scenario())


def test_a_draining_replica_is_emptied_even_of_requests_that_just_moved_there():
    async def scenario():
        rescheduler, a, b, _ = _cluster(rescheduling_req_select_value=1)
        await rescheduler.run_round()
        await rescheduler.wait_idle()
        assert a.calls == [("r0", "b:1")]
        # b now drains, holding r0 (in its cooldown): the drain moves it anyway, back to a.
        a.load = report(projected=0.1)
        b.load = report(("r0", 10, 1), serving=False, draining=True)
        started = await rescheduler.run_round()
        assert [(m.request_id, m.destination, m.policy) for m in started] == [("r0", "a:1", "drain")]

    asyncio.run(scenario())
