"""The rescheduler lease against a real redis-server: exactly one holder, renewal, hand-over on
stop, take-over after a crash (TTL), and a holder that loses Redis or the key stops at once."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from infermesh_frontend.rescheduling.lease import RedisLease
from infermesh_frontend.rescheduling.rescheduler import Rescheduler

from tests.rescheduling.fakes import FakeReplica, options, report
from tests.routing.redis_server import running_redis_server

KEY = "test:rescheduler:lease"


@pytest.fixture
def redis_url(tmp_path):
    with running_redis_server(tmp_path / "redis") as url:
        yield url


def test_one_holder_at_a_time_and_a_clean_stop_hands_over_at_once(redis_url):
    async def scenario():
        first, second = RedisLease(redis_url, KEY, 600, "first"), RedisLease(redis_url, KEY, 600, "second")
        await first.start()
        await second.start()
        assert first.active() and not second.active()
        await asyncio.sleep(0.5)  # past most of the TTL: renewals keep it with the first
        assert first.active() and not await second.refresh()
        await first.stop()
        assert await second.refresh() and second.active()
        await second.stop()

    asyncio.run(scenario())


def test_a_crashed_holder_is_replaced_after_the_ttl(redis_url):
    async def scenario():
        first, second = RedisLease(redis_url, KEY, 300, "first"), RedisLease(redis_url, KEY, 300, "second")
        assert await first.refresh()  # takes it, then never renews (a crash)
        assert not await second.refresh()
        deadline = time.monotonic() + 5
        while not await second.refresh():
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.05)
        assert not first.active()  # its own clock ran out before the key did
        await second.stop()

    asyncio.run(scenario())


def test_a_holder_whose_key_is_taken_stops_at_its_next_renewal(redis_url):
    async def scenario():
        lease = RedisLease(redis_url, KEY, 3000, "mine")
        assert await lease.refresh()
        redis.Redis.from_url(redis_url).set(KEY, "someone-else", px=3000)
        assert not await lease.refresh()
        assert not lease.active()
        await lease.stop()
        assert redis.Redis.from_url(redis_url).get(KEY) == b"someone-else"  # stop never deletes theirs

    asyncio.run(scenario())


def test_a_holder_that_loses_redis_stops_at_once(tmp_path):
    async def scenario():
        with running_redis_server(tmp_path / "redis") as url:
            lease = RedisLease(url, KEY, 3000, "mine")
            assert await lease.refresh()
        assert lease.active()  # still within what it took
        assert not await lease.refresh()  # the server is gone
        assert not lease.active()
        await lease.stop()

    asyncio.run(scenario())


def test_of_two_reschedulers_on_one_lease_only_the_holder_migrates(redis_url):
    async def scenario():
        a = FakeReplica(report(("r1", 10, 1), ("r2", 10, 1), projected=1.5))
        b = FakeReplica(report(projected=0.1))
        replicas = {"a:1": a, "b:1": b}
        opts = options(rescheduling_req_select_rule="NUM_REQ", rescheduling_req_select_value=1)
        one = Rescheduler(opts, lambda: replicas, RedisLease(redis_url, KEY, 1000, "one"))
        two = Rescheduler(opts, lambda: replicas, RedisLease(redis_url, KEY, 1000, "two"))
        await one.lease.start()
        await two.lease.start()
        assert await two.run_round() == []
        assert [m.request_id for m in await one.run_round()] == ["r1"]
        await one.wait_idle()
        await one.stop()  # hands the lease over
        assert await two.lease.refresh()
        assert [m.request_id for m in await two.run_round()] == ["r1"]  # two knows no cooldown of one's
        await two.stop()

    asyncio.run(scenario())
