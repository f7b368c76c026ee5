"""Two frontends and two scheduler replicas (each with its worker), found through a real Redis:
least_load spreads load, prefix_aware keeps a shared prefix on one replica, session sticks, and a
replica killed mid-stream loses no stream and changes no token (its requests fail over)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from infermesh.v1 import common_pb2, frontend_pb2, scheduler_pb2
from infermesh_shared.prefix_hash import first_block_hash

from tests.e2e.harness import build_served_model, frontend_stub, scheduler_stub, wait_all_blocks_free
from tests.routing.redis_server import running_redis_server
from tests.routing.replica_cluster import FRONTEND_HEALTH_MS, FRONTEND_POLL_MS, ReplicaCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT_LEN = 12
BLOCK_SIZE = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[ReplicaCluster]:
    model = build_served_model(
        "llama", tmp_path_factory.mktemp("routing-model"), hidden_size=32, num_layers=2
    )
    with running_redis_server(tmp_path_factory.mktemp("redis")) as redis_url:
        cluster = ReplicaCluster(
            model,
            tmp_path_factory.mktemp("routing-logs"),
            redis_url,
            scheduler_args=[
                "--dtype", "fp32", "--total-blocks", "256", "--block-size", str(BLOCK_SIZE),
                "--max-batch-size", "8",
            ],
        )  # fmt: skip
        try:
            cluster.start_replica("a")
            cluster.start_replica("b")
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(autouse=True)
def fresh_frontends(cluster) -> Iterator[None]:
    """Each test starts its own frontends (its own policy) and leaves every KV block free."""
    yield
    cluster.stop_frontends()
    for replica in cluster.replicas.values():
        if replica.alive():
            wait_all_blocks_free(replica.address)


def load(address: str) -> scheduler_pb2.GetLoadResponse:
    return scheduler_stub(address).GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5)


def queries(cluster: ReplicaCluster) -> dict[str, int]:
    """Prompt tokens each live replica has looked up in its prefix cache so far (one lookup per
    admitted request, of its whole prompt)."""
    return {name: load(r.address).prefix_cache_queries for name, r in cluster.replicas.items() if r.alive()}


def greedy(token_ids: list[int], max_tokens: int, session_id: str = "") -> frontend_pb2.GenerateInput:
    return frontend_pb2.GenerateInput(
        token_ids=frontend_pb2.TokenIds(ids=token_ids),
        sampling=frontend_pb2.ClientSamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
        session_id=session_id,
    )


def prompt(index: int, length: int = PROMPT_LEN) -> list[int]:
    return [3 + (index * 7 + position * 13) % 250 for position in range(length)]


def generate(frontend: str, request: frontend_pb2.GenerateInput) -> list[int]:
    response = frontend_stub(frontend).Generate(frontend_pb2.GenerateRequest(input=request), timeout=60)
    return list(response.completions[0].token_ids)


def test_least_load_spreads_64_requests_over_both_replicas(cluster) -> None:
    frontends = [cluster.start_frontend("least_load") for _ in range(2)]
    before = queries(cluster)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: generate(frontends[i % 2], greedy(prompt(i), 6)), range(64)))
    assert all(len(tokens) == 6 for tokens in results)
    served = {name: (count - before[name]) // PROMPT_LEN for name, count in queries(cluster).items()}
    assert sum(served.values()) == 64, served
    # least_load evens out requests in flight, not request counts: a replica that gets more of
    # the two shared cores finishes faster and so takes more; neither may be left nearly idle.
    assert min(served.values()) >= 8, f"least_load left a replica nearly idle: {served}"


def test_prefix_aware_keeps_a_shared_prefix_on_one_replica(cluster) -> None:
    frontends = [cluster.start_frontend("prefix_aware") for _ in range(2)]
    shared = prompt(1000, 4 * BLOCK_SIZE)
    generate(frontends[0], greedy(shared + [7, 8, 9], 2))
    # The replica that ran it reports the prefix's first block; give both frontends time to poll it.
    first_block = first_block_hash(shared, BLOCK_SIZE)
    deadline = time.monotonic() + 10
    while not any(first_block in load(r.address).cached_prefix_hashes for r in cluster.replicas.values()):
        assert time.monotonic() < deadline, "no replica reports the prefix as cached"
        time.sleep(0.02)
    time.sleep(5 * FRONTEND_POLL_MS / 1000)
    before = {name: load(r.address) for name, r in cluster.replicas.items()}
    for index in range(8):
        generate(frontends[index % 2], greedy(shared + prompt(index, 5), 2))
    after = {name: load(r.address) for name, r in cluster.replicas.items()}
    hits = {name: after[name].prefix_cache_hits - before[name].prefix_cache_hits for name in after}
    asked = {name: after[name].prefix_cache_queries - before[name].prefix_cache_queries for name in after}
    holder = max(hits, key=hits.get)
    other = next(name for name in hits if name != holder)
    assert hits[holder] >= 8 * len(shared), hits
    assert asked[other] == 0, f"prefix requests reached the replica without the prefix: {asked}"


def test_session_requests_stick_to_one_replica(cluster) -> None:
    frontends = [cluster.start_frontend("session") for _ in range(2)]
    for session in range(4):
        before = queries(cluster)
        for turn in range(5):
            generate(
                frontends[turn % 2], greedy(prompt(session * 10 + turn), 3, session_id=f"session-{session}")
            )
        grew = {name for name, count in queries(cluster).items() if count > before[name]}
        assert len(grew) == 1, f"session-{session} reached {grew}"


def stream_tokens(
    frontend: str, request: frontend_pb2.GenerateInput, progress: list[int], slot: int
) -> list[int]:
    tokens: list[int] = []
    finish = common_pb2.FINISH_REASON_UNSPECIFIED
    for message in frontend_stub(frontend).GenerateStream(
        frontend_pb2.GenerateStreamRequest(input=request), timeout=120
    ):
        tokens.extend(message.token_ids)
        progress[slot] = len(tokens)
        if message.finish_reason:
            finish = message.finish_reason
    assert finish == common_pb2.FINISH_REASON_LENGTH
    return tokens


def test_streams_survive_a_replica_killed_mid_way_and_it_is_used_again(cluster) -> None:
    frontends = [cluster.start_frontend("least_load", "--failover-max-attempts", "3") for _ in range(2)]
    requests = [greedy(prompt(500 + i), 40) for i in range(16)]
    progress = [0] * 16
    with ThreadPoolExecutor(16) as pool:
        reference = list(
            pool.map(lambda i: stream_tokens(frontends[i % 2], requests[i], progress, i), range(16))
        )

    progress = [0] * 16
    victim = cluster.replicas["a"]
    queried_before = load(victim.address).prefix_cache_queries
    killed = threading.Event()
    at_kill: dict[str, object] = {}

    def kill_when_streaming() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(1 for p in progress if p >= 3) < 4:
            time.sleep(0.005)
        queried = load(victim.address).prefix_cache_queries - queried_before
        at_kill["victim_requests"] = queried // PROMPT_LEN
        at_kill["progress"] = list(progress)
        cluster.kill_replica("a")
        killed.set()

    with ThreadPoolExecutor(17) as pool:
        killer = pool.submit(kill_when_streaming)
        futures = [pool.submit(stream_tokens, frontends[i % 2], requests[i], progress, i) for i in range(16)]
        outputs = [future.result() for future in futures]
        killer.result()
    assert killed.is_set()
    # The victim held some of these requests, and streams were part-way when it died.
    assert at_kill["victim_requests"] > 0
    assert any(0 < p < 40 for p in at_kill["progress"])
    assert sum(1 for p in progress if p == 40) == 16
    for index, (got, want) in enumerate(zip(outputs, reference, strict=True)):
        assert got == want, f"request {index} differs after failover"

    # The replica comes back on the same address: the frontends route to it again.
    cluster.start_replica("a", port=victim.port)
    time.sleep(3 * FRONTEND_HEALTH_MS / 1000)
    before = queries(cluster)["a"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: generate(frontends[i % 2], greedy(prompt(900 + i), 4)), range(16)))
    assert queries(cluster)["a"] > before, "the restarted replica got no requests"


def test_no_replica_left_is_unavailable_with_a_clear_message(cluster, tmp_path) -> None:
    frontend = cluster.start_frontend("least_load")
    # Point a frontend at an empty registry: it starts, but cannot place a request.
    lonely = ReplicaCluster(cluster.model_dir, tmp_path / "logs", cluster.redis_url.rsplit("/", 1)[0] + "/5")
    try:
        address = lonely.start_frontend("least_load", wait_ready=False)
        with pytest.raises(grpc.RpcError) as caught:
            generate(address, greedy(prompt(1), 2))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no scheduler replica is reachable" in caught.value.details()
        assert "--redis-url" in caught.value.details()
    finally:
        lonely.stop()
    assert generate(frontend, greedy(prompt(2), 2))


def test_streams_leave_a_replica_that_stops_answering(cluster) -> None:
    frontends = [cluster.start_frontend("round_robin") for _ in range(2)]
    requests = [greedy(prompt(700 + i), 40) for i in range(8)]
    progress = [0] * 8
    with ThreadPoolExecutor(8) as pool:
        reference = list(
            pool.map(lambda i: stream_tokens(frontends[i % 2], requests[i], progress, i), range(8))
        )

    progress = [0] * 8
    frozen = cluster.replicas["b"].scheduler.process
    at_stop: dict[str, list[int]] = {}

    def freeze_when_streaming() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(1 for p in progress if p >= 3) < 4:
            time.sleep(0.005)
        at_stop["progress"] = list(progress)
        os.kill(frozen.pid, signal.SIGSTOP)

    try:
        with ThreadPoolExecutor(9) as pool:
            freezer = pool.submit(freeze_when_streaming)
            futures = [
                pool.submit(stream_tokens, frontends[i % 2], requests[i], progress, i) for i in range(8)
            ]
            outputs = [future.result() for future in futures]
            freezer.result()
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert any(0 < p < 40 for p in at_stop["progress"])
    assert outputs == reference
