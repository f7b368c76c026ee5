"""FrontendService: text in, text out, over the scheduler replicas' token-id API."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from infermesh.v1 import frontend_pb2, frontend_pb2_grpc

from infermesh_frontend.client_auth import (
    MAX_CACHE_SALT_CHARS,
    ApiKeys,
    grpc_authorization,
    tenant_cache_salt,
)
from infermesh_frontend.completion_output import CompletionDelta
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_runner import RequestRunner, tokenizer_work

logger = logging.getLogger(__name__)


class FrontendServicer(frontend_pb2_grpc.FrontendServiceServicer):
    """FrontendService over the shared RequestRunner (the HTTP API uses the same one)."""

    def __init__(self, runner: RequestRunner, api_keys: ApiKeys | None = None) -> None:
        self._runner = runner
        self._api_keys = api_keys or ApiKeys(())
        self._tokenizer = runner.tokenizer
        self._model_info = runner.model_info

    def _authorize(
        self, request_input: frontend_pb2.GenerateInput, context: grpc.aio.ServicerContext
    ) -> None:
        # The interceptor let the call in; the key also names its tenant's cache namespace.
        tenant, _ = self._api_keys.authenticate(grpc_authorization(context.invocation_metadata()))
        if len(request_input.cache_salt) > MAX_CACHE_SALT_CHARS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"cache_salt has {len(request_input.cache_salt)} characters, "
                f"at most {MAX_CACHE_SALT_CHARS} allowed",
            )
        request_input.cache_salt = tenant_cache_salt(tenant, request_input.cache_salt)

    async def Generate(
        self, request: frontend_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.GenerateResponse:
        try:
            self._authorize(request.input, context)
            done = await self._runner.complete(request.input)
        except RequestError as error:
            await context.abort(error.code, error.message)
        return frontend_pb2.GenerateResponse(
            request_id=done.request_id,
            completions=[
                frontend_pb2.Completion(
                    index=output.index,
                    text=output.text,
                    token_ids=output.token_ids,
                    finish_reason=output.finish_reason,
                    logprobs=output.logprobs,
                    matched_stop=output.matched_stop,
                )
                for output in done.outputs
            ],
            usage=done.usage,
        )

    async def GenerateStream(
        self, request: frontend_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[frontend_pb2.GenerateStreamResponse]:
        try:
            self._authorize(request.input, context)
            # Started inside the RPC's server span, which becomes the request span's parent.
            deltas = self._runner.run(request.input, stream=True)
            async with contextlib.aclosing(deltas):
                async for delta in deltas:
                    yield _stream_message(delta)
        except RequestError as error:
            await context.abort(error.code, error.message)

    async def Tokenize(
        self, request: frontend_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.TokenizeResponse:
        ids = await tokenizer_work(
            len(request.text),
            self._tokenizer.encode,
            request.text,
            add_special_tokens=request.add_special_tokens,
        )
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
