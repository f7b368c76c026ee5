"""The frontend follows a live migration: the source replica's stream ends with `migrated_to`, and
the frontend attaches to the destination's stream of the same request (attach_migrated), so the
client sees one stream with no gap, no repeat, and no Abort sent to either replica."""

from __future__ import annotations

from infermesh.v1 import common_pb2, scheduler_pb2
from infermesh_frontend.server import FrontendServer
from infermesh_shared.config import config_from_options

from tests.frontend.fake_scheduler import start_fake_scheduler
from tests.routing.test_failover import (  # noqa: F401 - fixtures
    TOKENS,
    ResumingScheduler,
    loop,
    model_dir,
    stream,
)


class MigratingScheduler(ResumingScheduler):
    """Streams the first `moves_after` tokens, then ends the stream: the request moved."""

    def __init__(self, running: int, moves_after: int) -> None:
        super().__init__(running=running)
        self.moves_after = moves_after
        self.destination = ""

    async def Submit(self, request, context):  # noqa: N802 - gRPC name
        self.submits.append(request)
        for position in range(self.moves_after):
            yield scheduler_pb2.SubmitResponse(token_ids=[self.tokens[position]])
        yield scheduler_pb2.SubmitResponse(migrated_to=self.destination)


class AdoptingScheduler(ResumingScheduler):
    """Streams an adopted request from where the source stopped, only to an attaching Submit."""

    def __init__(self, running: int, starts_at: int) -> None:
        super().__init__(running=running)
        self.starts_at = starts_at

    async def Submit(self, request, context):  # noqa: N802 - gRPC name
        self.submits.append(request)
        assert request.attach_migrated
        last = request.sampling.max_tokens - 1
        for position in range(self.starts_at, last + 1):
            response = scheduler_pb2.SubmitResponse(token_ids=[self.tokens[position]])
            if position == last:
                response.finish_reason = common_pb2.FINISH_REASON_LENGTH
                response.usage.CopyFrom(common_pb2.Usage(prompt_tokens=3, completion_tokens=position + 1))
            yield response


def test_the_stream_follows_the_request_to_its_new_replica(loop, model_dir) -> None:  # noqa: F811
    source, destination = (
        MigratingScheduler(running=0, moves_after=6),
        AdoptingScheduler(running=5, starts_at=6),
    )
    servers, addresses = [], []
    for fake in (source, destination):
        server, port = loop.run(start_fake_scheduler(fake))
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    source.destination = addresses[1]

    async def start() -> FrontendServer:
        settings = config_from_options(
            "frontend",
            port=0,
            model_path=str(model_dir),
            scheduler_addresses=addresses,
            dispatch_policy="least_load",
            load_poll_interval_ms=50,
            health_check_interval_ms=200,
        )
        server = FrontendServer(settings)
        await server.start()
        return server

    frontend = loop.run(start())
    try:
        tokens, finish = stream(f"127.0.0.1:{frontend.port}", 16)
        assert tokens == TOKENS[:16] and finish == common_pb2.FINISH_REASON_LENGTH
        assert len(source.submits) == 1 and len(destination.submits) == 1
        assert not source.submits[0].attach_migrated
        assert destination.submits[0].request_id == source.submits[0].request_id
        assert source.aborts == [] and destination.aborts == []
        failovers = frontend.registry.get_sample_value(
            "infermesh_frontend_failovers_total", {"reason": "unavailable"}
        )
        assert not failovers
    finally:
        loop.run(frontend.stop(0))
        for server in servers:
            loop.run(server.stop(0))
