"""Renders chat messages into a prompt with the model's chat template, the way transformers does.

Same jinja2 setup as transformers' apply_chat_template (sandboxed, trim_blocks, lstrip_blocks,
loopcontrols, raise_exception, a tojson that keeps non-ASCII) and the same variables
(messages, add_generation_prompt, the special tokens), so a prompt matches what the model was
trained with.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template is missing, does not compile, or refused the messages (its raise_exception)."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


class ChatTemplate:
    """One compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, str | None]) -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except jinja2.exceptions.TemplateError as error:
            raise ChatTemplateError(f"the model's chat template does not compile: {error}") from error
        self._special_tokens = special_tokens

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text for `messages`; `extra` are chat_template_kwargs (as transformers'
        apply_chat_template **kwargs). Raises ChatTemplateError when the template refuses them."""
        variables = {**self._special_tokens, **(extra or {})}
        variables.update(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=tools, documents=None
        )
        try:
            return self._template.render(**variables)
        except jinja2.exceptions.TemplateError as error:
            raise ChatTemplateError(f"the model's chat template refused the messages: {error}") from error
