"""A JSON body -> a typed request model, or a 400 naming the field at fault."""

from __future__ import annotations

import json
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from infermesh_frontend.openai_http.api_error import invalid

Model = TypeVar("Model", bound=BaseModel)
_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "list", "dict", "none"})


def _param(location: tuple[int | str, ...]) -> str:
    """pydantic's error location as OpenAI names a field: messages[0].role."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not part.isidentifier() or part in _TYPE_TAGS:
            continue  # a union member's tag (str, list[int], ...), not a field
        else:
            text += f".{part}" if text else part
    return text


async def read_json(request: web.Request) -> object:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid(f"the request body is not valid JSON: {error}") from error


def typed_body(model: type[Model], body: object, strict_fields: bool) -> Model:
    """`body` checked against `model`; unknown fields are refused when `strict_fields`."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    if strict_fields:
        unknown = sorted(set(body) - set(model.model_fields))
        if unknown:
            raise invalid(
                f"unsupported field(s): {', '.join(unknown)} (this server runs with strict_request_fields); "
                f"it accepts {', '.join(sorted(model.model_fields))}",
                unknown[0],
            )
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        param = _param(tuple(first["loc"])) or None
        raise invalid(f"{param or 'body'}: {first['msg']} (got {first.get('input')!r:.80})", param) from None
