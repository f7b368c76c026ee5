"""/openapi.json: the HTTP API described from the pydantic models it validates with."""

from __future__ import annotations

import functools

from pydantic.json_schema import models_json_schema

from infermesh_frontend.openai_http import protocol as p

# (method, path, request model or None, response model or None, summary)
_ROUTES = (
    (
        "post",
        "/v1/completions",
        p.CompletionRequest,
        p.CompletionResponse,
        "Text completion (SSE with stream)",
    ),
    ("post", "/v1/chat/completions", p.ChatCompletionRequest, p.ChatCompletionResponse, "Chat completion"),
    ("get", "/v1/models", None, p.ModelList, "The served model names"),
    ("get", "/v1/models/{model_id}", None, p.ModelCard, "One served model"),
    ("post", "/tokenize", p.TokenizeCompletionRequest, p.TokenizeResponse, "Prompt or messages to token ids"),
    ("post", "/detokenize", p.DetokenizeRequest, p.DetokenizeResponse, "Token ids to text"),
    ("get", "/version", None, p.VersionResponse, "Server version"),
    ("get", "/health", None, None, "200 when a scheduler answers, else 503"),
    ("get", "/ping", None, None, "Same as /health"),
)
_EXTRA = (p.TokenizeChatRequest, p.ErrorResponse)


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@functools.cache
def openapi_document(version: str) -> dict:
    """An OpenAPI 3.1 document for every route; schemas are the models' JSON schemas."""
    models = {m for route in _ROUTES for m in route[2:4] if m is not None} | set(_EXTRA)
    _, schemas = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict] = {}
    for method, path, request, response, summary in _ROUTES:
        operation: dict = {"summary": summary, "responses": {}}
        if request is not None:
            body = _ref(request)
            if request is p.TokenizeCompletionRequest:
                body = {"oneOf": [body, _ref(p.TokenizeChatRequest)]}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        ok: dict = {"description": "OK"}
        if response is not None:
            ok["content"] = {"application/json": {"schema": _ref(response)}}
        operation["responses"]["200"] = ok
        operation["responses"]["default"] = {
            "description": "An OpenAI error object",
            "content": {"application/json": {"schema": _ref(p.ErrorResponse)}},
        }
        if "{model_id}" in path:
            operation["parameters"] = [
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "infermesh OpenAI-compatible API", "version": version},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }
