"""Size bounds checked before any work is done for a request (before tokenizing, before
anything is allocated or sent to a scheduler), so one client cannot make the frontend spend
seconds or megabytes on a request that is refused anyway."""

from __future__ import annotations

import grpc
from infermesh.v1 import frontend_pb2
from infermesh_shared.config.typed import FrontendRequestConfig

from infermesh_frontend.request_error import RequestError


def _refuse(message: str, param: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message, param)


def check_request_bounds(request_input: frontend_pb2.GenerateInput, bounds: FrontendRequestConfig) -> None:
    """Raises RequestError(INVALID_ARGUMENT) when the request is larger than the bounds allow, has
    no prompt, or has an empty stop string (what needs the text; the scheduler judges the rest)."""
    sampling = request_input.sampling
    if sampling.HasField("n") and sampling.n > bounds.max_n:
        raise _refuse(f"n = {sampling.n} is over this frontend's max_n = {bounds.max_n}", "n")
    if sampling.logprobs > bounds.max_logprobs:
        raise _refuse(
            f"logprobs = {sampling.logprobs} is over max_logprobs = {bounds.max_logprobs}", "logprobs"
        )
    if len(sampling.stop) > bounds.max_stop_strings:
        raise _refuse(
            f"too many stop strings: {len(sampling.stop)} given, at most {bounds.max_stop_strings} allowed "
            "(the frontend's max_stop_strings)",
            "stop",
        )
    for position, stop in enumerate(sampling.stop):
        if not stop:
            raise _refuse(f"stop string #{position} is empty; remove it or give a non-empty string", "stop")
        size = len(stop.encode("utf-8", "surrogatepass"))
        if size > bounds.max_stop_string_bytes:
            raise _refuse(
                f"stop[{position}] is {size} bytes, "
                f"over max_stop_string_bytes = {bounds.max_stop_string_bytes}",
                "stop",
            )
    prompt_kind = request_input.WhichOneof("prompt")
    if prompt_kind is None or not (request_input.text or request_input.token_ids.ids):
        raise _refuse("the prompt is empty: give non-empty text or at least one token id", "prompt")
    if prompt_kind == "text":
        size = len(request_input.text.encode("utf-8", "surrogatepass"))
        if size > bounds.max_prompt_bytes:
            raise _refuse(
                f"the prompt is {size} bytes, "
                f"over this frontend's max_prompt_bytes = {bounds.max_prompt_bytes}",
                "prompt",
            )
    elif prompt_kind == "token_ids":
        # 4 bytes a token id: the same bound for a prompt given as ids.
        count = len(request_input.token_ids.ids)
        if count * 4 > bounds.max_prompt_bytes:
            raise _refuse(
                f"the prompt has {count} token ids, over max_prompt_bytes = {bounds.max_prompt_bytes} / 4",
                "prompt",
            )
