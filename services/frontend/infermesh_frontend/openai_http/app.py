"""The OpenAI-compatible HTTP API on aiohttp, sharing the gRPC servicer's event loop and RequestRunner.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (JSON or SSE with
`stream: true`). A client that closes its connection cancels the handler (handler_cancellation),
which closes the runner's stream and so aborts the request at the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from infermesh.v1 import common_pb2
from infermesh_shared.grpc_transport import PortInUseError
from infermesh_shared.telemetry import semconv as sc
from prometheus_client import CollectorRegistry

from infermesh_frontend.client_auth import ApiKeys, tenant_cache_salt
from infermesh_frontend.completion_output import CompletionDelta
from infermesh_frontend.openai_http.api_error import ApiError, invalid
from infermesh_frontend.openai_http.best_of import best_of
from infermesh_frontend.openai_http.chat_template import ChatTemplate, ChatTemplateError
from infermesh_frontend.openai_http.client_auth_middleware import api_key_middleware, request_tenant
from infermesh_frontend.openai_http.connection_guard import (
    ConnectionGuard,
    HttpLimits,
    body_guard_middleware,
    throttle_accept_errors,
)
from infermesh_frontend.openai_http.http_tracing import trace_http_requests
from infermesh_frontend.openai_http.info_routes import InfoRoutes
from infermesh_frontend.openai_http.metrics_route import metrics_routes
from infermesh_frontend.openai_http.protocol import ChatCompletionRequest, CompletionRequest
from infermesh_frontend.openai_http.request_body import read_json, typed_body
from infermesh_frontend.openai_http.response_shapes import (
    ChatShape,
    CompletionShape,
    ResponseShape,
)
from infermesh_frontend.openai_http.schemas import (
    ParsedRequest,
    apply_queue_timeout_header,
    parse_chat_request,
    parse_completion_request,
)
from infermesh_frontend.openai_http.served_models import ServedModels, model_card
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_runner import RequestRunner, tokenizer_work
from infermesh_frontend.request_tracing import tokenize_span
from infermesh_frontend.token_bytes import TokenBytes

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors_as_openai_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as OpenAI's error JSON with the matching HTTP status."""
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status, headers=error.headers())
    except RequestError as error:
        api_error = ApiError.from_grpc(error.code, error.message, error.param)
        return web.json_response(api_error.body(), status=api_error.status, headers=api_error.headers())
    except web.HTTPException as error:
        if error.status >= 400:
            api_error = ApiError(error.status, f"{request.method} {request.path}: {error.reason}")
            return web.json_response(api_error.body(), status=error.status, headers=api_error.headers())
        raise


class OpenAIApi:
    """The route handlers; every generation goes through `runner`, as gRPC Generate does."""

    def __init__(
        self, runner: RequestRunner, served: ServedModels, strict_request_fields: bool = False
    ) -> None:
        self.runner = self._runner = runner
        self.served = self._served = served
        self.strict = strict_request_fields
        tokenizer = runner.tokenizer
        self._token_bytes = TokenBytes(tokenizer.tokenizer)
        self._special_tokens = {
            "bos_token": tokenizer.settings.bos_token,
            "eos_token": tokenizer.settings.eos_token,
        }
        self._chat_template: ChatTemplate | None = None
        self._chat_template_error = "the model directory has no chat template (tokenizer_config.json)"
        if tokenizer.chat_template is not None:
            try:
                self._chat_template = ChatTemplate(tokenizer.chat_template, self._special_tokens)
            except ChatTemplateError as error:
                self._chat_template_error = str(error)
                logger.warning("chat completions are off: %s", error)

    def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        template_source: str | None = None,
        kwargs: dict | None = None,
    ) -> str:
        """The prompt for `messages`: the request's chat_template, else the model's; 400 when it fails."""
        try:
            if template_source is not None:
                template = ChatTemplate(template_source, self._special_tokens)
            elif self._chat_template is not None:
                template = self._chat_template
            else:
                raise invalid(
                    f"chat completions are not available: {self._chat_template_error}; "
                    "use /v1/completions or give chat_template",
                    "messages",
                )
            return template.render(messages, add_generation_prompt=add_generation_prompt, extra=kwargs)
        except ChatTemplateError as error:
            raise invalid(
                str(error), "chat_template" if template_source is not None else "messages"
            ) from error

    async def chat_prompt_ids(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        template_source: str | None = None,
        kwargs: dict | None = None,
        add_special_tokens: bool = False,
    ) -> list[int]:
        """The token ids of the rendered conversation (see render_chat); a large one is rendered
        and tokenized off the event loop, as a long completion prompt is."""

        def render_and_encode() -> list[int]:
            prompt = self.render_chat(messages, add_generation_prompt, template_source, kwargs)
            return self._runner.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

        size = sum(len(str(m.get("content") or "")) for m in messages) + len(template_source or "")
        return await tokenizer_work(size, render_and_encode)

    def routes(self) -> list[web.RouteDef]:
        return [
            *InfoRoutes(self).routes(),
            web.get("/v1/models", self.models),
            web.get("/v1/models/{model_id:.+}", self.model),
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
        ]

    async def models(self, request: web.Request) -> web.Response:
        model = await self._runner.model_info.get()
        entries = [model_card(name, model) for name in self._served.names(model)]
        return web.json_response({"object": "list", "data": entries})

    async def model(self, request: web.Request) -> web.Response:
        model = await self._runner.model_info.get()
        name = self._served.resolve(request.match_info["model_id"], model)
        return web.json_response(model_card(name, model))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        parsed = parse_completion_request(body)
        typed_body(CompletionRequest, body, self.strict)
        shape = CompletionShape(*await self._envelope(parsed, "cmpl"), self._token_text)
        return await self._answer(request, parsed, shape)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        parsed = parse_chat_request(body)
        typed_body(ChatCompletionRequest, body, self.strict)
        shape = ChatShape(*await self._envelope(parsed, "chatcmpl"), self._token_text, self._token_bytes)
        # As transformers' apply_chat_template: the template already placed the special tokens.
        with tokenize_span():
            ids = await self.chat_prompt_ids(
                parsed.messages,
                parsed.add_generation_prompt,
                parsed.chat_template,
                parsed.chat_template_kwargs,
            )
        parsed.generate_input.token_ids.ids.extend(ids)
        return await self._answer(request, parsed, shape)

    async def _envelope(self, parsed: ParsedRequest, prefix: str) -> tuple[str, int, str]:
        """(response id, created, model) after checking the model is the one served."""
        name = self._served.resolve(parsed.model, await self._runner.model_info.get())
        request_id = uuid.uuid4().hex
        parsed.generate_input.request_id = request_id
        return f"{prefix}-{request_id}", int(time.time()), name

    def _prompt_tokens(self, parsed: ParsedRequest) -> int:
        """Prompt length for continuous usage stats (tokenized once more only when they are asked)."""
        generate_input = parsed.generate_input
        if not parsed.continuous_usage:
            return 0
        if generate_input.WhichOneof("prompt") == "token_ids":
            return len(generate_input.token_ids.ids)
        return len(self._runner.tokenizer.encode(generate_input.text, add_special_tokens=True))

    def _token_text(self, token_id: int) -> str:
        return self._runner.tokenizer.decode([token_id], skip_special_tokens=False)

    async def _answer(
        self, request: web.Request, parsed: ParsedRequest, shape: ResponseShape
    ) -> web.StreamResponse:
        operation = sc.OPERATION_CHAT if isinstance(shape, ChatShape) else sc.OPERATION_TEXT_COMPLETION
        # Cache hits never cross tenants: each key gets its own prefix-cache namespace.
        salted = parsed.generate_input
        apply_queue_timeout_header(request.headers, salted)
        salted.cache_salt = tenant_cache_salt(request_tenant(request), salted.cache_salt)
        try:
            if not parsed.stream:
                done = await self._runner.complete(salted, operation)
                outputs = best_of(done.outputs, parsed.requested_n) if parsed.best_of else done.outputs
                return web.json_response(
                    shape.response(outputs, done.usage, parsed.logprobs, parsed.echo_text)
                )
            deltas = self._runner.run(salted, stream=True, operation=operation)
            async with contextlib.aclosing(deltas):
                return await _stream(request, parsed, shape, deltas, self._prompt_tokens(parsed))
        except RequestError as error:
            raise _api_error(error, parsed) from None


def _api_error(error: RequestError, parsed: ParsedRequest) -> ApiError:
    """The HTTP form of a failed request, naming the field as the client's body did."""
    param = parsed.param_names.get(error.param, error.param) if error.param else None
    return ApiError.from_grpc(error.code, error.message, param)


async def _stream(
    request: web.Request,
    parsed: ParsedRequest,
    shape: ResponseShape,
    deltas: AsyncIterator[CompletionDelta],
    prompt_tokens: int,
) -> web.StreamResponse:
    """Server-sent events: one chunk per delta, then usage (when asked) and [DONE].

    The first delta is awaited before the 200 goes out, so a request the scheduler refuses
    still gets its HTTP error status; a failure after that is sent as an error event.
    """
    try:
        first = await anext(deltas)
    except StopAsyncIteration:
        raise ApiError(500, "the request ended without a result") from None
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)

    async def send(payload: object) -> None:
        await response.write(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    n = max(1, parsed.generate_input.sampling.n)
    running = common_pb2.Usage(prompt_tokens=prompt_tokens)
    with_usage = parsed.include_usage or parsed.continuous_usage

    def chunk(choices: list[dict]) -> dict:
        # continuous_usage_stats: every chunk carries the usage so far (vLLM's extension).
        return shape.chunk(choices, running if parsed.continuous_usage else None, with_usage=with_usage)

    if isinstance(shape, ChatShape):
        await send(chunk([shape.role_choice(i) for i in range(n)]))
    if parsed.echo_text:
        await send(
            chunk(
                [shape.delta_choice(CompletionDelta(index=i, text=parsed.echo_text), False) for i in range(n)]
            )
        )
    usage = None
    try:
        delta: CompletionDelta | None = first
        while delta is not None:
            running.completion_tokens += len(delta.token_ids)
            if delta.usage is not None:
                usage = delta.usage
                running.CopyFrom(usage)
            if delta.text or delta.finish_reason or (parsed.logprobs and delta.token_ids):
                await send(chunk([shape.delta_choice(delta, parsed.logprobs)]))
            delta = await anext(deltas, None)
    except RequestError as error:
        await send(_api_error(error, parsed).body())
    else:
        if parsed.include_usage and usage is not None:
            await send(shape.chunk([], usage, with_usage=True))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


class OpenAIHttpServer:
    """Binds the OpenAI API on host:port (0 picks a free port) on the running event loop."""

    def __init__(
        self,
        runner: RequestRunner,
        host: str,
        port: int,
        served: ServedModels | None = None,
        strict_request_fields: bool = False,
        shutdown_timeout_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        api_keys: ApiKeys | None = None,
        limits: HttpLimits | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._host = host
        self._limits = limits or HttpLimits()
        self._listener: asyncio.base_events.Server | None = None
        self._ssl_context = ssl_context
        self._requested_port = port
        auth = [api_key_middleware(api_keys)] if api_keys is not None and api_keys.enabled else []
        app = web.Application(
            middlewares=[
                trace_http_requests,
                *auth,
                body_guard_middleware(self._limits),
                _errors_as_openai_json,
            ],
            client_max_size=self._limits.max_body_bytes,
        )
        app.add_routes(OpenAIApi(runner, served or ServedModels(), strict_request_fields).routes())
        if registry is not None:
            app.add_routes(metrics_routes(registry))
        # handler_cancellation: a client that hangs up cancels its handler, aborting its request.
        # shutdown_timeout: on stop, requests still running get this long, then are cancelled (aborted).
        self._app_runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=shutdown_timeout_s,
            keepalive_timeout=self._limits.keepalive_timeout_s,
        )
        self.port = 0

    async def start(self) -> int:
        """Starts serving; returns the bound port."""
        await self._app_runner.setup()
        loop = asyncio.get_running_loop()
        throttle_accept_errors(loop)
        # Our own listener (not a TCPSite): every connection passes the guard first.
        guard = ConnectionGuard(self._app_runner.server, self._limits)
        try:
            self._listener = await loop.create_server(
                guard,
                self._host,
                self._requested_port,
                ssl=self._ssl_context,
                reuse_address=True,
                reuse_port=False,
                backlog=min(self._limits.max_connections, 4096),
            )
        except OSError:
            await self._app_runner.cleanup()
            raise PortInUseError(f"{self._host}:{self._requested_port}", "http_port") from None
        self.port = self._listener.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._app_runner.cleanup()
