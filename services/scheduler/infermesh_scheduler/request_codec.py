"""Converts between the Submit protos and the core's request dataclasses."""

from __future__ import annotations

import time

from infermesh.v1 import common_pb2, scheduler_pb2

from infermesh_scheduler.core.errors import InvalidRequestError
from infermesh_scheduler.core.request import (
    FinishReason,
    PriorityClass,
    RequestOutput,
    RequestSpec,
    SamplingOptions,
)

_PRIORITY_CLASS = {
    common_pb2.PRIORITY_CLASS_UNSPECIFIED: PriorityClass.THROUGHPUT,
    common_pb2.PRIORITY_CLASS_THROUGHPUT: PriorityClass.THROUGHPUT,
    common_pb2.PRIORITY_CLASS_LATENCY_CRITICAL: PriorityClass.LATENCY_CRITICAL,
}

_FINISH_REASON = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: common_pb2.FINISH_REASON_ABORT,
}


def sampling_from_proto(params: common_pb2.SamplingParams) -> SamplingOptions:
    """The core's SamplingOptions for validated proto sampling parameters."""
    return SamplingOptions(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        seed=params.seed if params.HasField("seed") else None,
        max_tokens=params.max_tokens,
        stop_token_ids=tuple(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        n=params.n,
        logprobs=params.logprobs,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty or 1.0,
        logit_bias=tuple(sorted(params.logit_bias.items())),
        min_tokens=params.min_tokens,
        top_logprobs=params.top_logprobs,
    )


def spec_from_submit(
    request: scheduler_pb2.SubmitRequest, default_priority: int, timeout_s: float | None
) -> RequestSpec:
    """The core's RequestSpec for a SubmitRequest whose call has timeout_s left (the remaining
    time of its gRPC deadline; None without one). Raises InvalidRequestError when the message
    itself is malformed; what it asks for is check_request's to judge."""
    if not request.HasField("sampling"):
        raise InvalidRequestError(
            "sampling is missing: set at least sampling.max_tokens (>= 1) and sampling.n (>= 1)", "sampling"
        )
    if request.priority_class not in _PRIORITY_CLASS:
        allowed = ", ".join(common_pb2.PriorityClass.keys())
        raise InvalidRequestError(
            f"priority_class {request.priority_class} is unknown: use one of {allowed}", "priority_class"
        )
    if request.deadline_unix_ms:
        raise InvalidRequestError(
            "deadline_unix_ms is no longer read (a wall-clock instant breaks with clock skew between "
            "hosts): leave it 0 and set the gRPC deadline (timeout) of the Submit call instead",
            "deadline_unix_ms",
        )
    return RequestSpec(
        request_id=request.request_id,
        prompt_token_ids=list(request.prompt_token_ids),
        sampling=sampling_from_proto(request.sampling),
        priority=request.priority if request.HasField("priority") else default_priority,
        priority_class=_PRIORITY_CLASS[request.priority_class],
        timeout_s=timeout_s,
        client_id=request.client_id,
        arrival_time=time.monotonic(),
        resumed_output_token_ids=list(request.resumed_output_token_ids),
        cache_salt=request.cache_salt,
    )


def response_from_output(output: RequestOutput) -> scheduler_pb2.SubmitResponse | None:
    """The stream message for one core output, or None when it carries nothing to tell."""
    if not output.new_token_ids and output.finish_reason is None and output.usage is None:
        return None
    response = scheduler_pb2.SubmitResponse(
        index=output.index,
        token_ids=output.new_token_ids,
        logprobs=output.new_logprobs or (),
        finish_reason=_FINISH_REASON[output.finish_reason],
        top_logprobs=[
            common_pb2.TopLogprobs(token_ids=ids, logprobs=lps) for ids, lps in output.new_top_logprobs or ()
        ],
    )
    if output.usage is not None:
        u = output.usage
        response.usage.CopyFrom(
            common_pb2.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens,
            )
        )
    return response
