"""Live migration between two scheduler replicas, each with a real worker process.

The test plays the frontend: it streams a greedy request from replica A, asks A to migrate it to
B mid-stream, follows `migrated_to` with an attach_migrated Submit on B, and checks the tokens
against transformers (an undisturbed run), then that every block is free on both replicas. A
destination worker killed mid-copy leaves the request finishing on A.
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.request

import grpc
import pytest
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc
from infermesh_cli.local_cluster import wait_serving

from tests.free_port import free_port
from tests.model_factory import build_random_model, transformers_greedy
from tests.scheduler_service.service_harness import (
    start_scheduler,
    submit_request,
    wait_all_blocks_free,
)
from tests.scheduler_service.test_real_worker_recovery import start_real_worker

pytestmark = [pytest.mark.e2e, pytest.mark.multiproc, pytest.mark.slow]

PROMPT = [5, 17, 33, 8, 21, 9, 40, 2, 11, 3, 70, 6]
MAX_TOKENS = 40
# Long enough that the request is still running when the Migrate call reaches it, however busy
# the machine (a finished request cannot migrate).
LONG = 200


def _replica(model_dir):
    metrics_port = free_port()
    scheduler = start_scheduler(
        model_dir,
        "--total-blocks",
        "64",
        "--block-size",
        "4",
        "--worker-timeout-ms",
        "20000",
        "--metrics-port",
        str(metrics_port),
    )
    scheduler.metrics_port = metrics_port
    worker = start_real_worker(scheduler.address, "w")
    wait_serving(scheduler.address, 120)  # its worker group formed: requests are accepted
    channel = grpc.insecure_channel(scheduler.address)
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    return scheduler, worker, stub


def _metric(scheduler, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include `labels` (0 when there is none)."""
    url = f"http://127.0.0.1:{scheduler.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(item in line for item in wanted):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    model_dir = build_random_model(
        "llama", tmp_path_factory.mktemp("migration") / "model", vocab_size=256, max_position_embeddings=256
    )
    replicas = []
    try:
        for _ in range(2):
            replicas.append(_replica(model_dir))
        yield model_dir, replicas
    finally:
        for scheduler, worker, _ in replicas:
            worker.stop()
            scheduler.stop()


class _Stream:
    """One Submit streamed on a thread; the test reads its tokens as it goes."""

    def __init__(self, stub, request) -> None:
        self.request = request
        self.tokens: list[int] = []
        # The status the stream ended with, when it ended with an error (read_to_end(allow_error)).
        self.ended: grpc.StatusCode | None = None
        self._responses: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, args=(stub,), daemon=True).start()

    def _run(self, stub) -> None:
        try:
            for response in stub.Submit(self.request, timeout=120):
                self._responses.put(response)
        except grpc.RpcError as err:
            self._responses.put(err)
        self._responses.put(None)

    def read(self, count: int) -> None:
        """Waits until at least `count` tokens arrived."""
        while len(self.tokens) < count:
            item = self._responses.get(timeout=120)
            assert isinstance(item, scheduler_pb2.SubmitResponse), item
            self.tokens.extend(item.token_ids)

    def read_to_end(self, allow_error: bool = False) -> str:
        """Reads the rest of the stream; returns the address it migrated to ("" when it did not)."""
        moved_to = ""
        while (item := self._responses.get(timeout=120)) is not None:
            if allow_error and isinstance(item, grpc.RpcError):
                self.ended = item.code()
                continue
            assert isinstance(item, scheduler_pb2.SubmitResponse), item
            self.tokens.extend(item.token_ids)
            moved_to = item.migrated_to or moved_to
        return moved_to

    def attach(self, dest) -> None:
        """Streams the rest from the replica the request migrated to."""
        attach = scheduler_pb2.SubmitRequest()
        attach.CopyFrom(self.request)
        attach.attach_migrated = True
        for response in dest.Submit(attach, timeout=120):
            self.tokens.extend(response.token_ids)


def _wait_ready(stub) -> None:
    # The first request of a fresh replica waits for its worker group; a tiny one warms it.
    list(stub.Submit(submit_request("warm", [1, 2, 3], 2, ignore_eos=True), timeout=120))


def test_a_running_request_moves_to_the_other_replica_without_gap_repeat_or_recompute(two_replicas):
    model_dir, ((source_scheduler, _, source), (dest_scheduler, _, dest)) = two_replicas
    _wait_ready(source)
    _wait_ready(dest)
    expected = transformers_greedy(model_dir, PROMPT, LONG)

    stream = _Stream(source, submit_request("m1", PROMPT, LONG, ignore_eos=True))
    stream.read(10)
    result = source.Migrate(
        scheduler_pb2.MigrateRequest(request_id="m1", destination_address=dest_scheduler.address), timeout=120
    )
    assert result.migrated, result.reason
    assert result.bytes_copied > 0 and result.downtime_s > 0
    assert stream.read_to_end() == dest_scheduler.address
    stream.attach(dest)
    assert stream.tokens == expected
    wait_all_blocks_free(source)
    wait_all_blocks_free(dest)
    assert _metric(source_scheduler, "infermesh_migrations_total", outcome="migrated", reason="") == 1
    assert _metric(source_scheduler, "infermesh_migration_bytes_total") == result.bytes_copied
    assert _metric(source_scheduler, "infermesh_migration_downtime_seconds_count") == 1


def test_migrating_a_request_that_is_not_running_is_refused_and_it_stays(two_replicas):
    _, ((source_scheduler, _, source), (dest_scheduler, _, _)) = two_replicas
    result = source.Migrate(
        scheduler_pb2.MigrateRequest(request_id="nobody", destination_address=dest_scheduler.address),
        timeout=30,
    )
    assert not result.migrated and "not live" in result.reason
    assert _metric(source_scheduler, "infermesh_migrations_total", outcome="failed", reason="not_live") == 1


def test_an_unreachable_destination_leaves_the_request_running_on_the_source(two_replicas):
    model_dir, ((_, _, source), _) = two_replicas
    _wait_ready(source)
    expected = transformers_greedy(model_dir, PROMPT, MAX_TOKENS)
    stream = _Stream(source, submit_request("m2", PROMPT, MAX_TOKENS, ignore_eos=True))
    stream.read(5)
    result = source.Migrate(
        scheduler_pb2.MigrateRequest(request_id="m2", destination_address="127.0.0.1:1"), timeout=120
    )
    assert not result.migrated and result.reason
    assert stream.read_to_end() == ""
    assert stream.tokens == expected
    wait_all_blocks_free(source)


def test_attaching_to_a_request_that_did_not_migrate_here_is_not_found(two_replicas):
    _, (_, (_, _, dest)) = two_replicas
    attach = submit_request("ghost", PROMPT, 4, attach_migrated=True)
    with pytest.raises(grpc.RpcError) as caught:
        list(dest.Submit(attach, timeout=30))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_drain_moves_every_running_request_and_the_streams_go_on_at_the_destination(two_replicas, capsys):
    from infermesh_cli.__main__ import main

    model_dir, ((source_scheduler, _, source), (dest_scheduler, _, dest)) = two_replicas
    _wait_ready(source)
    prompts = {"d1": PROMPT, "d2": PROMPT[::-1]}
    streams = {
        rid: _Stream(source, submit_request(rid, p, LONG, ignore_eos=True)) for rid, p in prompts.items()
    }
    for stream in streams.values():
        stream.read(3)
    listed = source.GetLoad(scheduler_pb2.GetLoadRequest(include_requests=True), timeout=10)
    assert {r.request_id for r in listed.requests if r.running} == set(prompts)
    code = main(["drain", "--replica", source_scheduler.address, "--to", dest_scheduler.address])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 of 2 running requests migrated" in out
    for rid, prompt in prompts.items():
        assert streams[rid].read_to_end() == dest_scheduler.address
        streams[rid].attach(dest)
        assert streams[rid].tokens == transformers_greedy(model_dir, prompt, LONG)
    wait_all_blocks_free(source)
    wait_all_blocks_free(dest)
    code = main(
        [
            "migrate",
            "--request-id",
            "gone",
            "--replica",
            source_scheduler.address,
            "--to",
            dest_scheduler.address,
        ]
    )
    assert code == 1 and "not live" in capsys.readouterr().err


def test_a_request_aborted_while_it_migrates_is_gone_from_both_replicas(two_replicas):
    """The abort is sent as soon as the destination reserved blocks for the request (the copy
    stages run then), so it lands mid-migration on most runs; wherever it lands, the request must
    end on both replicas with every block back."""
    _, ((source_scheduler, _, source), (dest_scheduler, _, dest)) = two_replicas
    _wait_ready(source)
    _wait_ready(dest)
    prompt = [(7 * i) % 250 + 1 for i in range(60)]  # a longer context: more blocks to copy
    stream = _Stream(source, submit_request("m4", prompt, 150, ignore_eos=True))
    stream.read(3)
    migrated: list = []
    migrate = threading.Thread(
        target=lambda: migrated.append(
            source.Migrate(
                scheduler_pb2.MigrateRequest(request_id="m4", destination_address=dest_scheduler.address),
                timeout=120,
            )
        )
    )
    free_before = dest.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=10).free_blocks
    migrate.start()
    deadline = time.monotonic() + 30
    while dest.GetLoad(scheduler_pb2.GetLoadRequest(), timeout=10).free_blocks == free_before:
        if not migrate.is_alive() or time.monotonic() > deadline:
            break  # it ended (or never reserved) before we saw it: abort anyway
    source.Abort(scheduler_pb2.AbortRequest(request_id="m4"), timeout=30)
    migrate.join(120)
    moved_to = stream.read_to_end(allow_error=True)
    if moved_to:  # the abort came after the hand-over: the caller ends it where it went
        assert migrated[0].migrated
        dest.Abort(scheduler_pb2.AbortRequest(request_id="m4"), timeout=30)
    else:
        assert not migrated[0].migrated, migrated[0]
        assert stream.ended is not None or stream.tokens  # the stream ended here, by the abort
    wait_all_blocks_free(source)
    wait_all_blocks_free(dest)
    outcome = "migrated" if migrated[0].migrated else "failed"
    assert _metric(source_scheduler, "infermesh_migrations_total", outcome=outcome) >= 1


def test_a_dead_destination_worker_fails_the_copy_and_the_request_finishes_on_the_source(two_replicas):
    # Last in the module: it kills the destination's worker.
    model_dir, ((_, _, source), (dest_scheduler, dest_worker, dest)) = two_replicas
    _wait_ready(source)
    expected = transformers_greedy(model_dir, PROMPT, MAX_TOKENS)
    dest_worker.kill()  # the destination's group still looks ready until its next liveness probe
    stream = _Stream(source, submit_request("m3", PROMPT, MAX_TOKENS, ignore_eos=True))
    stream.read(5)
    result = source.Migrate(
        scheduler_pb2.MigrateRequest(request_id="m3", destination_address=dest_scheduler.address), timeout=120
    )
    assert not result.migrated and result.reason
    assert stream.read_to_end() == ""
    assert stream.tokens == expected
    wait_all_blocks_free(source)
    wait_all_blocks_free(dest)
