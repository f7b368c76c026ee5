"""OpenAI request bodies -> GenerateInput / ClientSamplingParams, refusing what cannot be honoured.

Types are checked first by the pydantic models (protocol.py); this module checks values and
meaning. A field this server cannot honour with the value given (several prompts per request,
echo with prompt logprobs, ...) is refused with a 400 naming it, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infermesh.v1 import frontend_pb2

from infermesh_frontend.client_auth import MAX_CACHE_SALT_CHARS
from infermesh_frontend.openai_http.api_error import invalid


@dataclass(slots=True)
class ParsedRequest:
    """What an endpoint needs besides the GenerateInput to shape its answer."""

    model: str
    generate_input: frontend_pb2.GenerateInput
    stream: bool = False
    include_usage: bool = False
    # Return the sampled tokens' log probabilities.
    logprobs: bool = False
    # Every stream chunk carries the usage so far (stream_options.continuous_usage_stats).
    continuous_usage: bool = False
    # Text put before each completion's own (echo): the prompt, or chat's last assistant message.
    echo_text: str = ""
    # best_of: completions sampled; the n with the highest cumulative logprob are returned.
    best_of: int = 0
    # The n the client asked for (sampling.n is best_of while ranking).
    requested_n: int = 1
    # The body's name for a GenerateInput field it sets under another one, so a refusal naming
    # the field (RequestError.param) names what the client sent.
    param_names: dict[str, str] = field(default_factory=dict)
    # Chat only: the conversation, rendered into the prompt by the chat template.
    messages: list[dict[str, Any]] = field(default_factory=list)
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    add_generation_prompt: bool = True


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


def _uint32(body: dict[str, Any], name: str) -> int | None:
    """body[name] as its protobuf field carries it (uint32); its meaning is the scheduler's to judge."""
    value = _optional(body, name, "int")
    if value is not None and not 0 <= value <= _UINT32_MAX:
        raise invalid(f"{name} must be a whole number from 0 to {_UINT32_MAX}, got {value}", name)
    return value


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Structured output and tool calling are not built yet: refused rather than ignored."""
    for name in ("tools", "guided_json", "guided_regex", "guided_choice", "guided_grammar"):
        if body.get(name):
            raise invalid(f"{name} is not supported by this server yet; leave it out", name)
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise invalid(
            "response_format other than {'type': 'text'} is not supported by this server yet",
            "response_format",
        )


def _logit_bias(body: dict[str, Any]) -> dict[int, float]:
    """OpenAI's {"token id as a string": bias} -> {token id: bias} (ranges are checked later)."""
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise invalid("logit_bias must be an object of token id -> bias", "logit_bias")
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise invalid(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        if not 0 <= token <= _UINT32_MAX or not _is_number(value):
            raise invalid(f"logit_bias[{key!r}] must map a token id >= 0 to a number", "logit_bias")
        parsed[token] = float(value)
    return parsed


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
    # The values' ranges are the scheduler's (check_request, which names the field at fault); here
    # only types and what the protobuf fields can carry.
    for name in ("temperature", "top_p", "min_p"):
        value = _optional(body, name, "number")
        if value is not None:
            setattr(params, name, float(value))
    top_k = _optional(body, "top_k", "int")
    if top_k is not None:
        if top_k == -1:
            top_k = 0  # vLLM's spelling of "off"
        params.top_k = _at_most("top_k", top_k, _INT32_MAX)
    max_tokens = _uint32(body, max_tokens_field)
    if max_tokens is not None:
        params.max_tokens = max_tokens
    n = _uint32(body, "n")
    if n is not None:
        params.n = n
    seed = _non_negative_int(body, "seed")
    if seed is not None:
        params.seed = _at_most("seed", seed, _UINT64_MAX)
    params.ignore_eos = bool(_optional(body, "ignore_eos", "bool"))
    stop_token_ids = body.get("stop_token_ids") or []
    for position, token in enumerate(stop_token_ids):
        if not 0 <= token <= _UINT32_MAX:
            raise invalid(
                f"stop_token_ids[{position}] must be a token id >= 0, got {token}", "stop_token_ids"
            )
    params.stop_token_ids.extend(stop_token_ids)
    skip = _optional(body, "skip_special_tokens", "bool")
    if skip is not None:
        params.skip_special_tokens = skip
    params.include_stop_str_in_output = bool(_optional(body, "include_stop_str_in_output", "bool"))
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = _optional(body, name, "number")
        if value is not None:
            setattr(params, name, float(value))
    for token, bias in _logit_bias(body).items():
        params.logit_bias[token] = bias
    min_tokens = _non_negative_int(body, "min_tokens")
    if min_tokens:
        params.min_tokens = _at_most("min_tokens", min_tokens, _UINT32_MAX)
    return params


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(stream, include_usage, continuous_usage_stats)."""
    stream = bool(_optional(body, "stream", "bool"))
    options = body.get("stream_options")
    if options is None:
        return stream, False, False
    if not stream:
        raise invalid("stream_options is only allowed with stream: true", "stream_options")
    include_usage = bool(_optional(options, "include_usage", "bool"))
    continuous = bool(_optional(options, "continuous_usage_stats", "bool"))
    return stream, include_usage, continuous


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
    cache_salt = _optional(body, "cache_salt", "str")
    if cache_salt is not None:
        # vLLM's rule: given means non-empty. The tenant's salt is added in front by the app.
        if not cache_salt or len(cache_salt) > MAX_CACHE_SALT_CHARS:
            raise invalid(
                f"cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_CHARS} characters",
                "cache_salt",
            )
        generate_input.cache_salt = cache_salt
    queue_timeout = _optional(body, "queue_timeout_ms", "int")
    if queue_timeout is not None:
        generate_input.queue_timeout_ms = checked_queue_timeout_ms(queue_timeout, "queue_timeout_ms")
    return generate_input


QUEUE_TIMEOUT_HEADER = "x-queue-timeout-ms"


def checked_queue_timeout_ms(value: int, param: str) -> int:
    """A request's queue_timeout_ms (body field or header): milliseconds, 1 .. 2**32-1."""
    if not 1 <= value <= _UINT32_MAX:
        raise invalid(
            f"{param} must be a whole number of milliseconds from 1 to {_UINT32_MAX}, got {value}", param
        )
    return value


def apply_queue_timeout_header(
    headers: Mapping[str, str], generate_input: frontend_pb2.GenerateInput
) -> None:
    """x-queue-timeout-ms, when the body did not set queue_timeout_ms itself."""
    text = headers.get(QUEUE_TIMEOUT_HEADER)
    if text is None or generate_input.queue_timeout_ms:
        return
    if not text.strip().isdigit():
        raise invalid(
            f"{QUEUE_TIMEOUT_HEADER} must be a whole number of milliseconds, got {text!r}",
            QUEUE_TIMEOUT_HEADER,
        )
    generate_input.queue_timeout_ms = checked_queue_timeout_ms(int(text), QUEUE_TIMEOUT_HEADER)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required: give the id /v1/models lists", "model")
    return model


def parse_completion_request(body: Any) -> ParsedRequest:
    """A /v1/completions body -> ParsedRequest; raises ApiError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    _refuse_unsupported(body)
    if _optional(body, "suffix", "str"):
        raise invalid("suffix is not supported by this server; leave it out", "suffix")
    logprobs = _uint32(body, "logprobs")
    echo = bool(_optional(body, "echo", "bool"))
    if echo and logprobs is not None:
        raise invalid(
            "echo with logprobs needs prompt logprobs, which this server does not compute yet", "echo"
        )
    sampling = _sampling(body)
    stream, include_usage, continuous = _stream_flags(body)
    best_of = _optional(body, "best_of", "int")
    n = sampling.n if sampling.HasField("n") else 1
    if best_of is not None:
        if best_of < n:
            raise invalid(f"best_of ({best_of}) must be >= n ({n})", "best_of")
        if stream and best_of > n:
            raise invalid("best_of > n cannot be streamed: the best are known only at the end", "best_of")
        if best_of > n:
            sampling.n = _at_most("best_of", best_of, _UINT32_MAX)
    ranked = best_of is not None and best_of > n
    # Ranking needs every completion's cumulative logprob, whether or not the client asked for them.
    sampling.logprobs = 1 if logprobs is not None or ranked else 0
    sampling.top_logprobs = logprobs or 0
    generate_input = _generate_input(body, sampling)
    _set_prompt(generate_input, body.get("prompt"))
    return ParsedRequest(
        _model(body),
        generate_input,
        stream,
        include_usage,
        logprobs is not None,
        continuous,
        echo_text=generate_input.text if echo and generate_input.WhichOneof("prompt") == "text" else "",
        best_of=best_of if ranked else 0,
        requested_n=n,
        param_names={"top_logprobs": "logprobs"},
    )


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


def _message(position: int, message: Any) -> dict[str, Any]:
    param = f"messages[{position}]"
    if not isinstance(message, dict):
        raise invalid(f"{param} must be an object with role and content", param)
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
    if content is None and (message.get("tool_calls") or role != "user"):
        content = ""  # an assistant turn that only calls tools
    if not isinstance(content, str):
        raise invalid(f"{param}.content must be a string or a list of text parts", f"{param}.content")
    rendered: dict[str, Any] = {"role": role, "content": content}
    # Tool turns go to the chat template as they came, as transformers passes them.
    for key in ("tool_calls", "tool_call_id"):
        if message.get(key) is not None:
            rendered[key] = message[key]
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
    top_logprobs = _uint32(body, "top_logprobs") or 0
    if top_logprobs and not logprobs:
        raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
    sampling.logprobs = 1 if logprobs else 0
    sampling.top_logprobs = top_logprobs
    stream, include_usage, continuous = _stream_flags(body)
    kwargs = body.get("chat_template_kwargs") or {}
    add_generation_prompt = _optional(body, "add_generation_prompt", "bool")
    # vLLM's chat echo: a last message in the assistant's role is continued, and returned with it.
    last = parsed_messages[-1]
    echo = bool(_optional(body, "echo", "bool")) and last["role"] == "assistant"
    return ParsedRequest(
        _model(body),
        _generate_input(body, sampling),
        stream,
        include_usage,
        logprobs,
        continuous,
        echo_text=last.get("content") or "" if echo else "",
        messages=parsed_messages,
        chat_template=_optional(body, "chat_template", "str"),
        chat_template_kwargs=dict(kwargs),
        add_generation_prompt=True if add_generation_prompt is None else add_generation_prompt,
        param_names={"prompt": "messages", "max_tokens": limit_field},
    )
