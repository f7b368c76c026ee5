"""The one generation path every API shares: validate, submit, stream deltas, time and trace.

FrontendService (gRPC) and the OpenAI-compatible HTTP API both turn their request into a
GenerateInput and call RequestRunner.run; only the wire format around it differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from infermesh.v1 import common_pb2, frontend_pb2, scheduler_pb2
from infermesh_shared.config.typed import FrontendRequestConfig
from infermesh_shared.telemetry import semconv as sc
from infermesh_shared.telemetry.request_metrics import RequestMetrics

from infermesh_frontend.completion_output import CompletionDelta, CompletionOutput
from infermesh_frontend.drain import Drain
from infermesh_frontend.generation import Generation, PreparedRequest
from infermesh_frontend.generation_metrics import GenerationTimer
from infermesh_frontend.model_info import ModelInfoSource
from infermesh_frontend.request_bounds import check_request_bounds
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_tracing import RequestTrace
from infermesh_frontend.sampling_params import SamplingDefaults, resolve_sampling_params
from infermesh_frontend.scheduler_pool import SchedulerPool
from infermesh_frontend.tokenizer import FrontendTokenizer

# Prompts shorter than this (characters) are tokenized inline: a thread hop costs more.
_T = TypeVar("_T")
_INLINE_TOKENIZE_CHARS = 4096


async def tokenizer_work(size_chars: int, fn: Callable[..., _T], *args, **kwargs) -> _T:
    """`fn(*args, **kwargs)` (tokenizing, rendering a chat template) over `size_chars` of input.

    Large inputs take milliseconds to seconds: they run on a thread, off the event loop, so the
    streams of other clients keep flowing meanwhile; small ones inline (a thread hop costs more)."""
    if size_chars < _INLINE_TOKENIZE_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


@dataclass(frozen=True, slots=True)
class CompletedRequest:
    """A request run to its end: the id the client knows it by, each completion as the
    Generation gathered it (text, token ids, logprobs, finish reason, matched stop), usage."""

    request_id: str
    outputs: list[CompletionOutput]
    usage: common_pb2.Usage


class RequestRunner:
    """Tokenizes, submits to a scheduler replica, detokenizes and applies stop strings."""

    def __init__(
        self,
        tokenizer: FrontendTokenizer,
        pool: SchedulerPool,
        model_info: ModelInfoSource,
        limits: FrontendRequestConfig,
        failover_max_attempts: int,
        metrics: RequestMetrics | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.drain = drain or Drain()
        self.model_info = model_info
        self._pool = pool
        self._default_max_tokens = limits.default_max_tokens
        self._request_timeout_ms = limits.request_timeout_ms
        self._metrics = metrics
        self._failover_max_attempts = failover_max_attempts
        # The request-size bounds (max_n, max_prompt_bytes, ...) are options of this section too.
        self._bounds = limits

    def _served_model_name(self) -> str:
        cached = self.model_info.cached
        return cached.model_name if cached is not None else ""

    async def prepare(
        self, request_input: frontend_pb2.GenerateInput, request_trace: RequestTrace | None = None
    ) -> PreparedRequest:
        """Validates `request_input` and turns it into a SubmitRequest; raises RequestError."""
        request_trace = request_trace or RequestTrace(stream=False, enabled=False)
        check_request_bounds(request_input, self._bounds)
        # Unique per frontend request whatever the client calls it (request ids are scoped to
        # their client); the client's own id is only echoed back.
        request_id = uuid.uuid4().hex
        if request_input.WhichOneof("prompt") == "text":
            with request_trace.tokenize():
                prompt_ids = await self._encode(request_input.text)
        else:
            prompt_ids = list(request_input.token_ids.ids)
        model = await self.model_info.get()
        request_trace.model_resolved(model.model_name)
        sampling = resolve_sampling_params(
            request_input.sampling,
            len(prompt_ids),
            SamplingDefaults(self._default_max_tokens, model.max_model_len),
        )

        timeout_ms = _effective_timeout_ms(request_input.timeout_ms, self._request_timeout_ms)
        submit = scheduler_pb2.SubmitRequest(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            priority_class=request_input.priority_class,
            client_id=request_input.client_id,
            non_blocking=request_input.non_blocking,
            queue_timeout_ms=request_input.queue_timeout_ms,
            cache_salt=request_input.cache_salt,
        )
        if request_input.HasField("priority"):
            submit.priority = request_input.priority
        client = request_input.sampling
        return PreparedRequest(
            submit,
            list(request_input.sampling.stop),
            request_input.session_id,
            timeout_ms,
            self._failover_max_attempts,
            client_request_id=request_input.request_id,
            deadline=time.monotonic() + timeout_ms / 1000 if timeout_ms else None,
            skip_special_tokens=client.skip_special_tokens
            if client.HasField("skip_special_tokens")
            else True,
            include_stop_str=client.include_stop_str_in_output,
        )

    async def _encode(self, text: str) -> list[int]:
        return await tokenizer_work(len(text), self.tokenizer.encode, text, add_special_tokens=True)

    async def complete(
        self, request_input: frontend_pb2.GenerateInput, operation: str = sc.OPERATION_TEXT_COMPLETION
    ) -> CompletedRequest:
        """Runs one request to its end for an API that answers once; raises RequestError."""
        started: list[Generation] = []
        async with contextlib.aclosing(self.run(request_input, False, operation, started.append)) as deltas:
            async for _ in deltas:
                pass
        [generation] = started
        return CompletedRequest(generation.reply_id, generation.outputs, generation.usage())

    async def run(
        self,
        request_input: frontend_pb2.GenerateInput,
        stream: bool = False,
        operation: str = sc.OPERATION_TEXT_COMPLETION,
        on_start: Callable[[Generation], None] | None = None,
    ) -> AsyncIterator[CompletionDelta]:
        """Prepares, runs, times and traces one request; yields its deltas; raises RequestError.

        The request's span (its gen_ai.operation.name is `operation`) is a child of the span
        current at the first iteration. Closing the iterator early (the client went away) aborts
        the request at the scheduler. `on_start` is handed the Generation once it exists.
        """
        timer = GenerationTimer(self._metrics, operation, self._served_model_name)
        request_trace = RequestTrace(stream, operation=operation)
        try:
            self.drain.admit()
            prepared = await self.prepare(request_input, request_trace)
            prepared.submit.operation = (
                scheduler_pb2.GEN_AI_OPERATION_CHAT
                if operation == sc.OPERATION_CHAT
                else scheduler_pb2.GEN_AI_OPERATION_TEXT_COMPLETION
            )
            request_trace.prepared(prepared.submit, prepared.client_request_id)
            new_detokenizer = functools.partial(
                self.tokenizer.detokenizer, skip_special_tokens=prepared.skip_special_tokens
            )
            generation = Generation(self._pool, prepared, new_detokenizer, request_trace)
            if on_start is not None:
                on_start(generation)
            async with (
                contextlib.aclosing(generation.stream()) as source,
                contextlib.aclosing(self.drain.bounded(source)) as deltas,
            ):
                async for delta in deltas:
                    timer.tokens_arrived(len(delta.token_ids))
                    request_trace.tokens_received(len(delta.token_ids))
                    if delta.usage is not None:
                        reasons = [output.finish_reason for output in generation.outputs]
                        timer.finished(delta.usage, reasons[0])
                        request_trace.end(grpc.StatusCode.OK, usage=delta.usage, finish_reasons=reasons)
                    yield delta
        except RequestError as error:
            timer.failed(error.code)
            request_trace.end(error.code, error.message)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            timer.failed(grpc.StatusCode.CANCELLED)
            request_trace.end(grpc.StatusCode.CANCELLED, "the client went away")
            raise
        finally:
            # A no-op once ended above; else the generator failed in a way not caught here.
            request_trace.end(grpc.StatusCode.UNKNOWN, "the request ended without a result")


def _effective_timeout_ms(request_timeout_ms: int, service_timeout_ms: int) -> int:
    """The request's own timeout, else the service's request_timeout_ms; 0 means none."""
    return request_timeout_ms if request_timeout_ms > 0 else service_timeout_ms
