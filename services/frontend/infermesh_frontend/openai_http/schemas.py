"""OpenAI request bodies -> GenerateInput / ClientSamplingParams, refusing what cannot be honoured.

Fields this service cannot serve (echo, penalties, logit_bias, top alternatives in logprobs,
several prompts per request, unknown fields) are refused with a 400 naming the field, never
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infermesh.v1 import frontend_pb2

from infermesh_frontend.openai_http.api_error import invalid

# Fields both endpoints take, OpenAI's own and infermesh's extensions (top_k .. priority).
_COMMON_FIELDS = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
        "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user",
        "top_k", "min_p", "ignore_eos", "priority",
    }
)  # fmt: skip
COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "logprobs", "echo", "best_of", "suffix"}
CHAT_FIELDS = _COMMON_FIELDS | {"messages", "logprobs", "top_logprobs", "max_completion_tokens"}
_MESSAGE_FIELDS = frozenset({"role", "content", "name"})


@dataclass(slots=True)
class ParsedRequest:
    """What an endpoint needs besides the GenerateInput to shape its answer."""

    model: str
    generate_input: frontend_pb2.GenerateInput
    stream: bool = False
    include_usage: bool = False
    # Return the sampled tokens' log probabilities.
    logprobs: bool = False
    # Chat only: the conversation, rendered into the prompt by the chat template.
    messages: list[dict[str, str]] = field(default_factory=list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float))) and not isinstance(value, bool)


def _optional(body: dict[str, Any], name: str, kind: str) -> Any:
    """body[name] when present and not null, checked to be of `kind` (int, number, bool, str)."""
    value = body.get(name)
    if value is None:
        return None
    check = {"int": _is_int, "number": _is_number, "bool": lambda v: isinstance(v, bool),
             "str": lambda v: isinstance(v, str)}[kind]  # fmt: skip
    if not check(value):
        noun = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string"}[kind]
        raise invalid(f"{name} must be {noun}, got {value!r}", name)
    return value


_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def _at_most(name: str, value: int, limit: int) -> int:
    # The protobuf field's range: beyond it the value cannot even be carried to the scheduler.
    if value > limit:
        raise invalid(f"{name} must be <= {limit}, got {value}", name)
    return value


def _non_negative_int(body: dict[str, Any], name: str) -> int | None:
    value = _optional(body, name, "int")
    if value is not None and value < 0:
        raise invalid(f"{name} must be >= 0, got {value}", name)
    return value


def _refuse_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(
            f"unsupported field(s): {', '.join(unknown)}; this server accepts {', '.join(sorted(allowed))}",
            unknown[0],
        )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        value = _optional(body, name, "number")
        if value:
            raise invalid(f"{name} is not supported by this server; leave it out or set it to 0", name)
    if body.get("logit_bias"):
        raise invalid("logit_bias is not supported by this server; leave it out", "logit_bias")


def _stop_strings(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise invalid(f"stop must be a string or a list of strings, got {stop!r}", "stop")


def _sampling(
    body: dict[str, Any], max_tokens_field: str = "max_tokens"
) -> frontend_pb2.ClientSamplingParams:
    params = frontend_pb2.ClientSamplingParams(stop=_stop_strings(body))
    # Range checks are the shared ones (resolve_sampling_params); here only types and signs.
    for name in ("temperature", "top_p", "min_p"):
        value = _optional(body, name, "number")
        if value is not None:
            setattr(params, name, float(value))
    top_k = _optional(body, "top_k", "int")
    if top_k is not None:
        if top_k == -1:
            top_k = 0  # vLLM's spelling of "off"
        params.top_k = _at_most("top_k", top_k, _INT32_MAX)
    max_tokens = _optional(body, max_tokens_field, "int")
    if max_tokens is not None:
        if max_tokens < 1:
            raise invalid(f"{max_tokens_field} must be >= 1, got {max_tokens}", max_tokens_field)
        params.max_tokens = _at_most(max_tokens_field, max_tokens, _UINT32_MAX)
    n = _optional(body, "n", "int")
    if n is not None:
        if n < 1:
            raise invalid(f"n (number of completions) must be >= 1, got {n}", "n")
        params.n = _at_most("n", n, _UINT32_MAX)
    seed = _non_negative_int(body, "seed")
    if seed is not None:
        params.seed = _at_most("seed", seed, _UINT64_MAX)
    params.ignore_eos = bool(_optional(body, "ignore_eos", "bool"))
    return params


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(_optional(body, "stream", "bool"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise invalid("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise invalid(
            f"stream_options must be an object with only include_usage, got {options!r}", "stream_options"
        )
    return stream, bool(_optional(options, "include_usage", "bool"))


def _generate_input(
    body: dict[str, Any], sampling: frontend_pb2.ClientSamplingParams
) -> frontend_pb2.GenerateInput:
    generate_input = frontend_pb2.GenerateInput(sampling=sampling)
    user = _optional(body, "user", "str")
    if user:
        generate_input.client_id = user
    priority = _optional(body, "priority", "int")
    if priority is not None:
        if not -_INT32_MAX - 1 <= priority <= _INT32_MAX:
            raise invalid(f"priority must be a 32-bit integer, got {priority}", "priority")
        generate_input.priority = priority
    return generate_input


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required: give the id /v1/models lists", "model")
    return model


def parse_completion_request(body: Any) -> ParsedRequest:
    """A /v1/completions body -> ParsedRequest; raises ApiError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    _refuse_unknown(body, COMPLETION_FIELDS)
    _refuse_unsupported(body)
    if _optional(body, "echo", "bool"):
        raise invalid("echo is not supported by this server; leave it out or set it to false", "echo")
    if _optional(body, "suffix", "str"):
        raise invalid("suffix is not supported by this server; leave it out", "suffix")
    best_of = _optional(body, "best_of", "int")
    if best_of is not None and best_of != 1:
        raise invalid("best_of is not supported by this server; use n for several completions", "best_of")
    logprobs = _non_negative_int(body, "logprobs")
    if logprobs:
        raise invalid(
            "logprobs > 0 asks for the most likely alternatives, which this server does not compute; "
            "use logprobs: 0 for the log probability of each generated token",
            "logprobs",
        )
    sampling = _sampling(body)
    sampling.logprobs = 1 if logprobs is not None else 0
    generate_input = _generate_input(body, sampling)
    _set_prompt(generate_input, body.get("prompt"))
    stream, include_usage = _stream_flags(body)
    return ParsedRequest(_model(body), generate_input, stream, include_usage, logprobs is not None)


def _set_prompt(generate_input: frontend_pb2.GenerateInput, prompt: Any) -> None:
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise invalid(
                f"{len(prompt)} prompts in one request are not supported; send one request per prompt",
                "prompt",
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise invalid("prompt is empty: give non-empty text or a list of token ids", "prompt")
        generate_input.text = prompt
    elif isinstance(prompt, list) and prompt and all(_is_int(t) and 0 <= t <= _UINT32_MAX for t in prompt):
        generate_input.token_ids.ids.extend(prompt)
    else:
        raise invalid(
            "prompt must be a non-empty string or a non-empty list of token ids (integers >= 0)", "prompt"
        )


def _message(position: int, message: Any) -> dict[str, str]:
    param = f"messages[{position}]"
    if not isinstance(message, dict):
        raise invalid(f"{param} must be an object with role and content", param)
    unknown = sorted(set(message) - _MESSAGE_FIELDS)
    if unknown:
        raise invalid(
            f"{param} has unsupported field(s) {', '.join(unknown)}; messages take role, content and name",
            param,
        )
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise invalid(f"{param}.role must be a non-empty string", f"{param}.role")
    content = message.get("content")
    if isinstance(content, list):
        # Content parts: only text can be served by a text model.
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise invalid(
                    f"{param}.content parts must be {{'type': 'text', 'text': ...}}", f"{param}.content"
                )
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise invalid(f"{param}.content must be a string or a list of text parts", f"{param}.content")
    rendered = {"role": role, "content": content}
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise invalid(f"{param}.name must be a string", f"{param}.name")
        rendered["name"] = name
    return rendered


def parse_chat_request(body: Any) -> ParsedRequest:
    """A /v1/chat/completions body -> ParsedRequest (prompt still to be rendered); raises ApiError(400)."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    _refuse_unknown(body, CHAT_FIELDS)
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list of {role, content} objects", "messages")
    parsed_messages = [_message(position, message) for position, message in enumerate(messages)]
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise invalid("give max_completion_tokens or max_tokens, not both", "max_completion_tokens")
    limit_field = "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
    sampling = _sampling(body, limit_field)
    logprobs = bool(_optional(body, "logprobs", "bool"))
    if _non_negative_int(body, "top_logprobs"):
        raise invalid(
            "top_logprobs > 0 asks for the most likely alternatives, which this server does not compute; "
            "use logprobs: true alone for the log probability of each generated token",
            "top_logprobs",
        )
    sampling.logprobs = 1 if logprobs else 0
    stream, include_usage = _stream_flags(body)
    return ParsedRequest(
        _model(body), _generate_input(body, sampling), stream, include_usage, logprobs, parsed_messages
    )
