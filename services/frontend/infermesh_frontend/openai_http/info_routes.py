"""vLLM's non-generation routes: /health, /ping, /version, /tokenize, /detokenize, /openapi.json."""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from infermesh_frontend.openai_http import protocol
from infermesh_frontend.openai_http.api_error import RETRY_AFTER_S, invalid
from infermesh_frontend.openai_http.chat_template import ChatTemplateError
from infermesh_frontend.openai_http.openapi import openapi_document
from infermesh_frontend.openai_http.request_body import read_json, typed_body
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.request_runner import tokenizer_work


def _version() -> str:
    try:
        return metadata.version("infermesh-frontend")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class InfoRoutes:
    """Routes that answer from the tokenizer and the cached model info; `api` is the OpenAIApi."""

    def __init__(self, api) -> None:
        self._api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            web.get("/ping", self.health),
            web.post("/ping", self.health),
            web.get("/version", self.version),
            web.post("/tokenize", self.tokenize),
            web.post("/detokenize", self.detokenize),
            web.get("/openapi.json", self.openapi),
        ]

    async def health(self, request: web.Request) -> web.Response:
        """200 when a scheduler answers, 503 otherwise (as vLLM's engine health) and while the
        frontend drains (balancers move away)."""
        try:
            self._api.runner.drain.admit()
            await self._api.runner.model_info.fetch()
        except RequestError as error:
            return web.Response(status=503, text=error.message, headers={"Retry-After": str(RETRY_AFTER_S)})
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(protocol.VersionResponse(version=_version()).model_dump())

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        model = await self._api.runner.model_info.get()
        tokenizer = self._api.runner.tokenizer
        if isinstance(body, dict) and "messages" in body:
            parsed = typed_body(protocol.TokenizeChatRequest, body, self._api.strict)
            self._check_model(parsed.model, model)
            ids = await self._api.chat_prompt_ids(
                [m.model_dump(exclude_none=True) for m in parsed.messages],
                parsed.add_generation_prompt,
                parsed.chat_template,
                parsed.chat_template_kwargs or {},
                parsed.add_special_tokens,
            )
        else:
            parsed = typed_body(protocol.TokenizeCompletionRequest, body, self._api.strict)
            self._check_model(parsed.model, model)
            ids = await tokenizer_work(
                len(parsed.prompt),
                tokenizer.encode,
                parsed.prompt,
                add_special_tokens=parsed.add_special_tokens,
            )
        answer = protocol.TokenizeResponse(count=len(ids), max_model_len=model.max_model_len, tokens=ids)
        return web.json_response(answer.model_dump())

    async def detokenize(self, request: web.Request) -> web.Response:
        parsed = typed_body(protocol.DetokenizeRequest, await read_json(request), self._api.strict)
        model = await self._api.runner.model_info.get()
        self._check_model(parsed.model, model)
        bad = [t for t in parsed.tokens if not 0 <= t < max(model.vocab_size, 1)]
        if bad:
            raise invalid(
                f"token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})", "tokens"
            )
        text = self._api.runner.tokenizer.decode(parsed.tokens, skip_special_tokens=False)
        return web.json_response(protocol.DetokenizeResponse(prompt=text).model_dump())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(_version()))

    def _check_model(self, name: str | None, model) -> None:
        if name is not None:
            self._api.served.resolve(name, model)


__all__ = ["InfoRoutes", "ChatTemplateError"]
