"""A real gRPC SchedulerService that streams canned token ids, for testing the frontend alone.

It refuses what the real scheduler's check_request refuses and records every other Submit, every
Abort and cancelled Submit, so tests can check what the frontend did.
Everything runs on one asyncio loop in a background thread, so sync tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from infermesh_scheduler.core.errors import InvalidRequestError
from infermesh_scheduler.core.request_check import RequestLimits, check_request
from infermesh_scheduler.request_codec import spec_from_submit
from infermesh_scheduler.submit_rejected import SubmitRejected
from infermesh_shared.field_violation import field_violation_metadata

# Bounds an "endless" stream so a frontend that never aborts cannot hang a test forever.
ENDLESS_STEP_LIMIT = 2000


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Streams `tokens` (one per message, per completion), then finish_reason; usage on the last message."""

    def __init__(self, vocab_size: int, max_model_len: int) -> None:
        self.model = common_pb2.ModelInfo(
            model_name="fake-model",
            architecture="LlamaForCausalLM",
            vocab_size=vocab_size,
            max_model_len=max_model_len,
            eos_token_ids=[2],
            block_size=16,
            total_blocks=64,
            tp_size=1,
            pp_size=1,
            dtype="fp32",
        )
        self.limits = RequestLimits(vocab_size, max_model_len, enable_cow=True)
        self.tokens: list[int] = []
        # Completion index -> its own tokens (others get `tokens`).
        self.tokens_by_index: dict[int, list[int]] = {}
        self.delay_s = 0.0
        # Keep cycling through `tokens` until the client cancels (bounded by ENDLESS_STEP_LIMIT).
        self.endless = False
        self.finish_reason = common_pb2.FINISH_REASON_LENGTH
        # (code, message[, SubmitRequest field]) to fail Submit with, as the real scheduler does
        # for bad input.
        self.error: tuple[grpc.StatusCode, str] | tuple[grpc.StatusCode, str, str] | None = None
        self.submits: list[scheduler_pb2.SubmitRequest] = []
        # The gRPC deadline each Submit arrived with, as time remaining (None: no deadline).
        self.time_remaining: list[float | None] = []
        self.aborts: list[str] = []
        self.cancelled: list[str] = []

    async def Submit(self, request: scheduler_pb2.SubmitRequest, context: grpc.aio.ServicerContext):
        if self.error is not None:
            self.submits.append(request)
            self.time_remaining.append(context.time_remaining())
            code, message, *field = self.error
            await context.abort(
                code, message, field_violation_metadata(code, message, field[0] if field else None)
            )
        try:
            # The real scheduler's request rules, so the frontend is tested against its messages;
            # a refused request is not recorded (it was never admitted).
            check_request(spec_from_submit(request, 0, None), self.limits)
        except InvalidRequestError as invalid:
            # As the real servicer answers: the status, the message and the field at fault.
            rejected = SubmitRejected.of(invalid)
            await context.abort(
                rejected.code,
                rejected.message,
                field_violation_metadata(rejected.code, rejected.message, rejected.field),
            )
        self.submits.append(request)
        self.time_remaining.append(context.time_remaining())
        n = request.sampling.n
        try:
            if self.endless:
                for step in range(ENDLESS_STEP_LIMIT):
                    for index in range(n):
                        yield self._message(request, index, self.tokens[step % len(self.tokens)])
                    await asyncio.sleep(self.delay_s)
                return
            per_index = [self.tokens_by_index.get(index, self.tokens) for index in range(n)]
            total = sum(len(tokens) for tokens in per_index)
            sent = 0
            for step in range(max(len(tokens) for tokens in per_index)):
                for index, tokens in enumerate(per_index):
                    if step >= len(tokens):
                        continue
                    response = self._message(request, index, tokens[step])
                    sent += 1
                    if step == len(tokens) - 1:
                        response.finish_reason = self.finish_reason
                    if sent == total:
                        response.usage.CopyFrom(
                            common_pb2.Usage(
                                prompt_tokens=len(request.prompt_token_ids), completion_tokens=total
                            )
                        )
                    yield response
                await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise

    @staticmethod
    def _message(
        request: scheduler_pb2.SubmitRequest, index: int, token_id: int
    ) -> scheduler_pb2.SubmitResponse:
        response = scheduler_pb2.SubmitResponse(index=index, token_ids=[token_id])
        if request.sampling.logprobs:
            response.logprobs.append(-0.5)
        return response

    async def Abort(self, request: scheduler_pb2.AbortRequest, context: grpc.aio.ServicerContext):
        self.aborts.append(request.request_id)
        return scheduler_pb2.AbortResponse(found=True)

    async def GetModelInfo(self, request, context: grpc.aio.ServicerContext):
        return scheduler_pb2.GetModelInfoResponse(model=self.model)

    async def GetLoad(self, request, context: grpc.aio.ServicerContext):
        return scheduler_pb2.GetLoadResponse(serving=True, total_blocks=64, free_blocks=64)


class LoopThread:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-aio-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def start_fake_scheduler(fake: FakeScheduler) -> tuple[grpc.aio.Server, int]:
    """Serves `fake` on 127.0.0.1 at a free port; returns the server and the port."""
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@contextlib.contextmanager
def serving_fake_scheduler(
    loop: LoopThread, vocab_size: int, max_model_len: int
) -> Iterator[tuple[FakeScheduler, str]]:
    """A FakeScheduler served on `loop` for the duration of the block; yields it and its address."""
    fake = FakeScheduler(vocab_size, max_model_len)
    server, port = loop.run(start_fake_scheduler(fake))
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        loop.run(server.stop(0))


@contextlib.contextmanager
def loop_thread() -> Iterator[LoopThread]:
    """A LoopThread closed when the block ends."""
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()
