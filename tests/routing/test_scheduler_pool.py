"""The frontend's SchedulerPool over real gRPC schedulers (fakes in this process): discovery,
load polling, policies, a replica going down and coming back, and Redis membership."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc
from infermesh_frontend.routing import ReplicaHealth, RouteRequest
from infermesh_frontend.scheduler_pool import NoSchedulerError, SchedulerPool
from infermesh_shared.config.typed import FrontendRoutingConfig
from infermesh_shared.discovery import RedisRegistration, StaticDiscovery, make_discovery
from infermesh_shared.prefix_hash import first_block_hash

from tests.frontend.fake_scheduler import FakeScheduler, LoopThread, start_fake_scheduler


class LoadedScheduler(FakeScheduler):
    """A fake scheduler whose GetLoad answer the test sets."""

    def __init__(self) -> None:
        super().__init__(vocab_size=512, max_model_len=256)
        self.load = scheduler_pb2.GetLoadResponse(serving=True, total_blocks=64, free_blocks=64)
        self.load_calls = 0

    async def GetLoad(self, request, context: grpc.aio.ServicerContext):  # noqa: N802 - gRPC name
        self.load_calls += 1
        return self.load


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


class Replicas:
    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.fakes: dict[str, LoadedScheduler] = {}
        self.servers: dict[str, grpc.aio.Server] = {}

    def start(self, port: int = 0, fake: LoadedScheduler | None = None) -> str:
        fake = fake or LoadedScheduler()

        async def serve() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(fake, server)
            bound = server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            return server, bound

        server, bound = self.loop.run(serve()) if port else self.loop.run(start_fake_scheduler(fake))
        address = f"127.0.0.1:{bound}"
        self.fakes[address], self.servers[address] = fake, server
        return address

    def stop(self, address: str) -> None:
        self.loop.run(self.servers.pop(address).stop(0))

    def stop_all(self) -> None:
        for address in list(self.servers):
            self.stop(address)


@pytest.fixture
def replicas(loop) -> Iterator[Replicas]:
    group = Replicas(loop)
    yield group
    group.stop_all()


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def make_pool(loop: LoopThread, addresses=(), policy="least_load", **kwargs) -> SchedulerPool:
    async def build() -> SchedulerPool:
        routing = FrontendRoutingConfig(
            dispatch_policy=policy, load_poll_interval_ms=50, health_check_interval_ms=200
        )
        discovery = kwargs.pop("discovery", None) or StaticDiscovery(list(addresses))
        pool = SchedulerPool(routing, discovery, **kwargs)
        await pool.start()
        return pool

    return loop.run(build())


def pick(loop: LoopThread, pool: SchedulerPool, route: RouteRequest | None = None, exclude=()) -> str:
    async def choose() -> str:
        return pool.pick(route or RouteRequest(), exclude).address

    return loop.run(choose())


def test_least_load_follows_polled_load_and_local_account(loop, replicas) -> None:
    a, b = replicas.start(), replicas.start()
    replicas.fakes[a].load.num_running = 5
    pool = make_pool(loop, [a, b])
    try:
        wait_until(lambda: pool.table.load(a).num_running == 5)
        assert pick(loop, pool) == b
        # Picks count on the chosen replica until the next poll: a burst spreads.
        picks = [pick(loop, pool) for _ in range(8)]
        assert picks.count(a) >= 1 and picks[:4] == [b, b, b, b]
    finally:
        loop.run(pool.close())


def test_dead_replica_is_skipped_and_used_again_when_back(loop, replicas) -> None:
    a, b = replicas.start(), replicas.start()
    pool = make_pool(loop, [a, b], policy="round_robin")
    try:
        port = int(a.rsplit(":", 1)[1])
        replicas.stop(a)
        wait_until(lambda: pool.table.health(a) is ReplicaHealth.DOWN)
        assert {pick(loop, pool) for _ in range(4)} == {b}
        replicas.start(port)
        wait_until(lambda: pool.table.health(a) is ReplicaHealth.UP)
        assert {pick(loop, pool) for _ in range(4)} == {a, b}
        with pytest.raises(NoSchedulerError, match="no scheduler replica is reachable"):
            loop.run(_pick_excluding_all(pool))
    finally:
        loop.run(pool.close())


async def _pick_excluding_all(pool: SchedulerPool) -> None:
    pool.pick(RouteRequest(), exclude=pool.replicas)


def test_prefix_aware_learns_block_size_and_follows_cached_prefixes(loop, replicas) -> None:
    a, b = replicas.start(), replicas.start()
    prompt = list(range(40))
    replicas.fakes[b].load.cached_prefix_hashes.append(first_block_hash(prompt, 16))
    replicas.fakes[b].load.num_running = 2
    pool = make_pool(loop, [a, b], policy="prefix_aware")
    try:
        wait_until(lambda: pool.policy.block_size == 16 and pool.table.load(b).cached_prefix_hashes)
        assert pick(loop, pool, RouteRequest(prompt)) == b
        assert pick(loop, pool, RouteRequest(list(range(100, 140)))) == a
    finally:
        loop.run(pool.close())


def test_redis_discovery_follows_registrations(loop, replicas, redis_url) -> None:
    a, b = replicas.start(), replicas.start()
    first = RedisRegistration(redis_url, a, ttl_s=1.0)
    first.start()
    pool = make_pool(loop, policy="round_robin", discovery=make_discovery("redis", redis_url=redis_url))
    second = RedisRegistration(redis_url, b, ttl_s=1.0)
    try:
        assert pool.addresses == [a]
        second.start()
        wait_until(lambda: pool.table.health(b) is ReplicaHealth.UP)
        assert {pick(loop, pool) for _ in range(4)} == {a, b}
        first.stop()
        wait_until(lambda: pool.addresses == [b])
        assert {pick(loop, pool) for _ in range(3)} == {b}
    finally:
        second.stop()
        loop.run(pool.close())


def test_empty_redis_registry_refuses_clearly(loop, redis_url) -> None:
    pool = make_pool(loop, discovery=make_discovery("redis", redis_url=redis_url))
    try:
        with pytest.raises(NoSchedulerError, match=r"none found by discovery = redis"):
            pick(loop, pool)
    finally:
        loop.run(pool.close())


def test_pool_stops_polling_when_closed(loop, replicas) -> None:
    a = replicas.start()
    pool = make_pool(loop, [a])
    loop.run(pool.close())
    calls = replicas.fakes[a].load_calls
    loop.run(asyncio.sleep(0.2))
    assert replicas.fakes[a].load_calls == calls


def test_dns_discovery_finds_the_replica_behind_a_name(loop, replicas) -> None:
    a = replicas.start()
    port = a.rsplit(":", 1)[1]
    pool = make_pool(
        loop, policy="round_robin", discovery=make_discovery("dns", dns_name=f"localhost:{port}")
    )
    try:
        # localhost may also resolve to ::1, where nothing listens: that record stays out of routing.
        assert a in pool.addresses
        assert {pick(loop, pool) for _ in range(3)} == {a}
    finally:
        loop.run(pool.close())
