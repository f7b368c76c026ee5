"""Failover of in-flight streams in the frontend, against fake schedulers in this process: a
replica that ends a stream with UNAVAILABLE, or stops answering altogether, hands the request to
another replica with the tokens already streamed as resumed_output_token_ids."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from infermesh.v1 import common_pb2, frontend_pb2, frontend_pb2_grpc, scheduler_pb2
from infermesh_cli.demo_tokenizer import build_demo_tokenizer, write_tokenizer_files
from infermesh_frontend.server import FrontendServer
from infermesh_shared.config import config_from_options

from tests.frontend.fake_scheduler import FakeScheduler, LoopThread, start_fake_scheduler

TOKENS = [40 + i for i in range(20)]


class ResumingScheduler(FakeScheduler):
    """Streams TOKENS after the resumed ones; may fail or hang after `fail_after` tokens."""

    def __init__(self, running: int = 0) -> None:
        super().__init__(vocab_size=512, max_model_len=256)
        self.tokens = TOKENS
        self.delay_s = 0.01
        self.fail_after: int | None = None
        self.hang = False
        self.load_response = scheduler_pb2.GetLoadResponse(
            serving=True, total_blocks=64, free_blocks=64, num_running=running
        )

    async def Submit(self, request, context):  # noqa: N802 - gRPC name
        self.submits.append(request)
        done = len(request.resumed_output_token_ids)
        for position in range(done, request.sampling.max_tokens):
            if self.fail_after is not None and position - done == self.fail_after:
                if self.hang:
                    await asyncio.sleep(3600)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler shutting down")
            last = position == request.sampling.max_tokens - 1
            response = scheduler_pb2.SubmitResponse(token_ids=[self.tokens[position]])
            if last:
                response.finish_reason = common_pb2.FINISH_REASON_LENGTH
                response.usage.CopyFrom(
                    common_pb2.Usage(
                        prompt_tokens=len(request.prompt_token_ids), completion_tokens=position + 1
                    )
                )
            yield response
            await asyncio.sleep(self.delay_s)

    async def GetLoad(self, request, context):  # noqa: N802 - gRPC name
        if self.hang and self.fail_after is not None and self.submits:
            await asyncio.sleep(3600)
        return self.load_response


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("failover-model")
    write_tokenizer_files(out, build_demo_tokenizer(512))
    return out


def run_cluster(
    loop: LoopThread, model_dir: Path, first: ResumingScheduler, second: ResumingScheduler, attempts: int
):
    servers, addresses = [], []
    for fake in (first, second):
        server, port = loop.run(start_fake_scheduler(fake))
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")

    async def start() -> FrontendServer:
        settings = config_from_options(
            "frontend",
            port=0,
            model_path=str(model_dir),
            scheduler_addresses=addresses,
            dispatch_policy="least_load",
            load_poll_interval_ms=50,
            health_check_interval_ms=200,
            failover_max_attempts=attempts,
        )
        frontend = FrontendServer(settings)
        await frontend.start()
        return frontend

    return servers, loop.run(start())


def stream(address: str, max_tokens: int) -> tuple[list[int], int]:
    with grpc.insecure_channel(address) as channel:
        stub = frontend_pb2_grpc.FrontendServiceStub(channel)
        request = frontend_pb2.GenerateInput(
            token_ids=frontend_pb2.TokenIds(ids=[5, 6, 7]),
            sampling=frontend_pb2.ClientSamplingParams(temperature=0, max_tokens=max_tokens),
        )
        tokens, finish = [], 0
        for message in stub.GenerateStream(frontend_pb2.GenerateStreamRequest(input=request), timeout=30):
            tokens.extend(message.token_ids)
            finish = message.finish_reason or finish
        return tokens, finish


@pytest.mark.parametrize("hang", [False, True], ids=["unavailable", "stops-answering"])
def test_stream_continues_on_another_replica_without_repeats(loop, model_dir, hang) -> None:
    first, second = ResumingScheduler(running=0), ResumingScheduler(running=5)
    first.fail_after, first.hang = 7, hang
    servers, frontend = run_cluster(loop, model_dir, first, second, attempts=3)
    try:
        tokens, finish = stream(f"127.0.0.1:{frontend.port}", 16)
        assert tokens == TOKENS[:16] and finish == common_pb2.FINISH_REASON_LENGTH
        assert len(first.submits) == 1 and len(second.submits) == 1
        resumed = second.submits[0]
        assert list(resumed.resumed_output_token_ids) == TOKENS[:7]
        assert list(resumed.prompt_token_ids) == [5, 6, 7] and resumed.sampling.max_tokens == 16
        assert resumed.request_id == first.submits[0].request_id
        registry = frontend.registry
        reason = "stalled" if hang else "unavailable"
        assert registry.get_sample_value("infermesh_frontend_failovers_total", {"reason": reason}) == 1
        for address in frontend.pool.addresses:
            assert (
                registry.get_sample_value("infermesh_frontend_routed_requests_total", {"replica": address})
                == 1
            )
        known = sum(
            registry.get_sample_value("infermesh_frontend_scheduler_replicas", {"health": health}) or 0
            for health in ("up", "down", "unknown")
        )
        assert known == 2
        if hang:  # a replica that failed one call but answers its polls is back up at once
            assert registry.get_sample_value("infermesh_frontend_scheduler_replicas", {"health": "down"}) == 1
    finally:
        loop.run(frontend.stop(0))
        for server in servers:
            loop.run(server.stop(0))


def test_no_attempts_left_ends_with_unavailable_and_says_why(loop, model_dir) -> None:
    first, second = ResumingScheduler(running=0), ResumingScheduler(running=5)
    first.fail_after = 3
    servers, frontend = run_cluster(loop, model_dir, first, second, attempts=1)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stream(f"127.0.0.1:{frontend.port}", 10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "went away in the middle of the request" in caught.value.details()
        assert "no other scheduler replica is left" in caught.value.details()
        assert not second.submits
    finally:
        loop.run(frontend.stop(0))
        for server in servers:
            loop.run(server.stop(0))
