"""The frontend's spans for one generation request (metrics are GenerationTimer's job).

Each Generate / GenerateStream gets a request span (child of the RPC's server span) with a
tokenize child span, a `route` event naming the scheduler picked, a stream child span per
scheduler attempt (the scheduler's Submit span is its child), and the time spent detokenizing
summed into an attribute: detokenizing is per token, too fine for a span each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2
from infermesh_shared.telemetry import get_tracer, tracing_enabled
from infermesh_shared.telemetry import semconv as sc
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

_FINISH_REASON_NAMES = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_ABORT: "abort",
}
# Codes that mean the service failed the request, not that the caller asked for something wrong.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
DETOKENIZE_MS = "infermesh.frontend.detokenize_ms"


class RequestTrace:
    """One generation request's span; every method is a no-op when tracing is off."""

    __slots__ = ("_tracer", "span", "_arrival", "_first_token_at", "_detokenize_s", "_ended")

    def __init__(
        self, stream: bool, enabled: bool | None = None, operation: str = sc.OPERATION_TEXT_COMPLETION
    ) -> None:
        """`enabled` None follows tracing_enabled(); False builds a shell that records nothing.
        `operation` is gen_ai.operation.name: text_completion, or chat for chat completions."""
        self._arrival = time.monotonic()
        self._first_token_at: float | None = None
        self._detokenize_s = 0.0
        self._ended = False
        self.span: Span | None = None
        self._tracer: trace.Tracer | None = None
        if tracing_enabled() if enabled is None else enabled:
            self._tracer = get_tracer("infermesh.frontend")
            # Child of the current span: the Generate/GenerateStream server span.
            self.span = self._tracer.start_span(
                sc.SPAN_FRONTEND_REQUEST,
                attributes={
                    sc.GEN_AI_OPERATION_NAME: operation,
                    sc.GEN_AI_PROVIDER_NAME: sc.PROVIDER_INFERMESH,
                    sc.GEN_AI_REQUEST_STREAM: stream,
                },
            )

    def _child(self, name: str) -> Span:
        assert self._tracer is not None and self.span is not None
        return self._tracer.start_span(name, context=trace.set_span_in_context(self.span))

    @contextlib.contextmanager
    def tokenize(self) -> Iterator[None]:
        """Wraps prompt tokenization in a child span."""
        if self.span is None:
            yield
            return
        with trace.use_span(self._child(sc.SPAN_TOKENIZE), end_on_exit=True):
            yield

    def model_resolved(self, model_name: str) -> None:
        """The request runs on `model_name` (one model per cluster: asked for and answering)."""
        if self.span is not None:
            self.span.set_attributes(
                {sc.GEN_AI_REQUEST_MODEL: model_name, sc.GEN_AI_RESPONSE_MODEL: model_name}
            )

    def prepared(self, submit: scheduler_pb2.SubmitRequest, client_request_id: str = "") -> None:
        """Records the validated request on the span; `client_request_id` is the client's own id."""
        span = self.span
        if span is None:
            return
        sampling = submit.sampling
        attributes: dict[str, object] = {
            sc.REQUEST_ID: submit.request_id,
            # What the client's answers carry as their id.
            sc.GEN_AI_RESPONSE_ID: client_request_id or submit.request_id,
            sc.GEN_AI_REQUEST_MAX_TOKENS: sampling.max_tokens,
            sc.GEN_AI_REQUEST_TEMPERATURE: sampling.temperature,
            sc.GEN_AI_REQUEST_TOP_P: sampling.top_p,
            sc.GEN_AI_REQUEST_TOP_K: sampling.top_k,
            sc.GEN_AI_REQUEST_CHOICE_COUNT: sampling.n,
            sc.GEN_AI_USAGE_INPUT_TOKENS: len(submit.prompt_token_ids),
        }
        if submit.HasField("priority"):
            attributes[sc.REQUEST_PRIORITY] = submit.priority
        if client_request_id:
            attributes[sc.CLIENT_REQUEST_ID] = client_request_id
        span.set_attributes(attributes)

    def start_stream(self, scheduler_address: str) -> Span | None:
        """The request was routed to `scheduler_address`: a `route` event and a stream span.

        Create the Submit call inside `trace.use_span(<returned span>)` so the scheduler's spans
        join this trace; end it with `end_stream`.
        """
        if self.span is None:
            return None
        self.span.add_event(sc.EVENT_ROUTE, {sc.SCHEDULER_ADDRESS: scheduler_address})
        stream = self._child(sc.SPAN_STREAM)
        stream.set_attribute(sc.SCHEDULER_ADDRESS, scheduler_address)
        return stream

    @staticmethod
    def end_stream(stream: Span | None, code: grpc.StatusCode | None = None) -> None:
        """Ends a stream span; `code` is the Submit call's status when it failed."""
        if stream is None:
            return
        if code is not None:
            stream.set_attribute(sc.RPC_GRPC_STATUS_CODE, code.value[0])
            if code in _SERVER_ERROR_CODES:
                stream.set_status(StatusCode.ERROR, code.name)
        stream.end()

    @contextlib.contextmanager
    def detokenizing(self) -> Iterator[None]:
        """Times one detokenization step (summed on the span)."""
        if self.span is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._detokenize_s += time.perf_counter() - started

    def tokens_received(self, count: int) -> None:
        """`count` new tokens reached the client: the first ones get an event."""
        if self.span is None or count <= 0 or self._first_token_at is not None:
            return
        self._first_token_at = time.monotonic()
        self.span.add_event(
            sc.EVENT_FIRST_TOKEN, {sc.TTFT_MS: (self._first_token_at - self._arrival) * 1000.0}
        )

    def end(
        self,
        code: grpc.StatusCode,
        message: str = "",
        usage: common_pb2.Usage | None = None,
        finish_reasons: Sequence[int] = (),
    ) -> None:
        """The RPC ended with `code`; ends the span (later calls do nothing)."""
        span = self.span
        if span is None or self._ended:
            return
        self._ended = True
        now = time.monotonic()
        attributes: dict[str, object] = {
            sc.E2E_LATENCY_MS: (now - self._arrival) * 1000.0,
            sc.RPC_GRPC_STATUS_CODE: code.value[0],
            DETOKENIZE_MS: self._detokenize_s * 1000.0,
        }
        if usage is not None:
            attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.completion_tokens
            attributes[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cached_prompt_tokens
        reasons = [_FINISH_REASON_NAMES.get(r, "unspecified") for r in finish_reasons]
        if reasons:
            attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
        if self._first_token_at is not None:
            attributes[sc.TTFT_MS] = (self._first_token_at - self._arrival) * 1000.0
        span.set_attributes(attributes)
        if code is grpc.StatusCode.OK:
            span.add_event(sc.EVENT_FINISHED)
        else:
            event = sc.EVENT_ABORTED if code is grpc.StatusCode.CANCELLED else sc.EVENT_REJECTED
            span.add_event(event, {sc.RPC_GRPC_STATUS_CODE: code.value[0], sc.ERROR_MESSAGE: message})
            if code in _SERVER_ERROR_CODES:
                span.set_status(StatusCode.ERROR, message or code.name)
        span.end()


@contextlib.contextmanager
def tokenize_span() -> Iterator[None]:
    """A tokenize span under the current span, for prompts tokenized before the request span
    exists (the HTTP chat path renders and tokenizes messages before it runs the request)."""
    if not tracing_enabled():
        yield
        return
    with get_tracer("infermesh.frontend").start_as_current_span(sc.SPAN_TOKENIZE):
        yield


def status_of_exit(error: BaseException | None) -> grpc.StatusCode:
    """The status a request ends with when `error` (or nothing) leaves its handler."""
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED
    code = getattr(error, "code", None)
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
