"""FrontendService: text in, text out, over the scheduler replicas' token-id API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc, scheduler_pb2
from infermesh_shared.telemetry.request_metrics import RequestMetrics

from infermesh_frontend.completion_output import CompletionDelta
from infermesh_frontend.generation import Generation, PreparedRequest
from infermesh_frontend.generation_metrics import GenerationTimer
from infermesh_frontend.model_info import ModelInfoSource
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_tracing import RequestTrace
from infermesh_frontend.sampling_params import InvalidRequestError, SamplingLimits, resolve_sampling_params
from infermesh_frontend.scheduler_pool import RequestContext, SchedulerPool
from infermesh_frontend.tokenizer import FrontendTokenizer

logger = logging.getLogger(__name__)


class FrontendServicer(frontend_pb2_grpc.FrontendServiceServicer):
    """Tokenizes, submits to a scheduler, detokenizes and applies stop strings."""

    def __init__(
        self,
        tokenizer: FrontendTokenizer,
        pool: SchedulerPool,
        model_info: ModelInfoSource,
        default_max_tokens: int,
        max_stop_strings: int,
        request_timeout_ms: int,
        failover_max_attempts: int = 3,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._pool = pool
        self._model_info = model_info
        self._default_max_tokens = default_max_tokens
        self._max_stop_strings = max_stop_strings
        self._request_timeout_ms = request_timeout_ms
        self._metrics = metrics
        self._failover_max_attempts = failover_max_attempts

    async def _prepare(
        self, request_input: frontend_pb2.GenerateInput, request_trace: RequestTrace | None = None
    ) -> PreparedRequest:
        """Validates `request_input` and turns it into a SubmitRequest; raises RequestError."""
        request_trace = request_trace or RequestTrace(stream=False, enabled=False)
        request_id = request_input.request_id or uuid.uuid4().hex
        prompt_kind = request_input.WhichOneof("prompt")
        if prompt_kind == "text":
            if not request_input.text:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty: give non-empty text"
                )
            with request_trace.tokenize():
                prompt_ids = self._tokenizer.encode(request_input.text, add_special_tokens=True)
        elif prompt_kind == "token_ids":
            prompt_ids = list(request_input.token_ids.ids)
        else:
            prompt_ids = []
        model = await self._model_info.get()
        limits = SamplingLimits(self._default_max_tokens, self._max_stop_strings, model.max_model_len)
        try:
            sampling = resolve_sampling_params(request_input.sampling, len(prompt_ids), limits)
        except InvalidRequestError as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error

        timeout_ms = _effective_timeout_ms(request_input.timeout_ms, self._request_timeout_ms)
        submit = scheduler_pb2.SubmitRequest(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            priority_class=request_input.priority_class,
            deadline_unix_ms=int(time.time() * 1000) + timeout_ms if timeout_ms else 0,
            client_id=request_input.client_id,
            non_blocking=request_input.non_blocking,
        )
        if request_input.HasField("priority"):
            submit.priority = request_input.priority
        context = RequestContext(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            session_id=request_input.session_id,
            client_id=request_input.client_id,
        )
        return PreparedRequest(
            submit, list(request_input.sampling.stop), context, timeout_ms, self._failover_max_attempts
        )

    async def _run(
        self, request_input: frontend_pb2.GenerateInput, stream: bool = False
    ) -> AsyncIterator[CompletionDelta]:
        """Prepares, runs, times and traces one request; yields its deltas; raises RequestError."""
        timer = GenerationTimer(self._metrics)
        # Started here, inside the RPC's server span, which becomes its parent.
        request_trace = RequestTrace(stream)
        try:
            prepared = await self._prepare(request_input, request_trace)
            request_trace.prepared(prepared.submit)
            generation = Generation(self._pool, prepared, self._tokenizer.decode, request_trace)
            async with contextlib.aclosing(generation.stream()) as deltas:
                async for delta in deltas:
                    timer.tokens_arrived(len(delta.token_ids))
                    request_trace.tokens_received(len(delta.token_ids))
                    if delta.usage is not None:
                        timer.finished(delta.usage)
                        reasons = [output.finish_reason for output in generation.outputs]
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

    async def Generate(
        self, request: frontend_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.GenerateResponse:
        completions: dict[int, frontend_pb2.Completion] = {}
        request_id = ""
        usage = None
        try:
            async with contextlib.aclosing(self._run(request.input)) as deltas:
                async for delta in deltas:
                    completion = completions.setdefault(
                        delta.index, frontend_pb2.Completion(index=delta.index)
                    )
                    completion.text += delta.text
                    completion.token_ids.extend(delta.token_ids)
                    completion.logprobs.extend(delta.logprobs)
                    if delta.finish_reason:
                        completion.finish_reason = delta.finish_reason
                        completion.matched_stop = delta.matched_stop
                    request_id = delta.request_id
                    if delta.usage is not None:
                        usage = delta.usage
        except RequestError as error:
            await context.abort(error.code, error.message)
        return frontend_pb2.GenerateResponse(
            request_id=request_id, completions=[completions[i] for i in sorted(completions)], usage=usage
        )

    async def GenerateStream(
        self, request: frontend_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[frontend_pb2.GenerateStreamResponse]:
        try:
            async with contextlib.aclosing(self._run(request.input, stream=True)) as deltas:
                async for delta in deltas:
                    yield _stream_message(delta)
        except RequestError as error:
            await context.abort(error.code, error.message)

    async def Tokenize(
        self, request: frontend_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.TokenizeResponse:
        ids = self._tokenizer.encode(request.text, add_special_tokens=request.add_special_tokens)
        return frontend_pb2.TokenizeResponse(token_ids=ids)

    async def Detokenize(
        self, request: frontend_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.DetokenizeResponse:
        vocab_size = self._tokenizer.vocab_size
        for position, token_id in enumerate(request.token_ids):
            if token_id >= vocab_size:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"token_ids[{position}]={token_id} is not below the tokenizer's vocab size {vocab_size}",
                )
        text = self._tokenizer.decode(
            list(request.token_ids), skip_special_tokens=request.skip_special_tokens
        )
        return frontend_pb2.DetokenizeResponse(text=text)

    async def GetModelInfo(
        self, request: frontend_pb2.FrontendServiceGetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.FrontendServiceGetModelInfoResponse:
        try:
            # Fresh from a scheduler: block counts change once its workers have registered.
            model = await self._model_info.fetch()
        except RequestError as error:
            await context.abort(error.code, error.message)
        return frontend_pb2.FrontendServiceGetModelInfoResponse(model=model)


def _effective_timeout_ms(request_timeout_ms: int, service_timeout_ms: int) -> int:
    """The request's own timeout, else the service's request_timeout_ms; 0 means none."""
    return request_timeout_ms if request_timeout_ms > 0 else service_timeout_ms


def _stream_message(delta: CompletionDelta) -> frontend_pb2.GenerateStreamResponse:
    message = frontend_pb2.GenerateStreamResponse(
        request_id=delta.request_id,
        index=delta.index,
        text=delta.text,
        token_ids=delta.token_ids,
        finish_reason=delta.finish_reason,
        logprobs=delta.logprobs,
        matched_stop=delta.matched_stop,
    )
    if delta.usage is not None:
        message.usage.CopyFrom(delta.usage)
    return message
