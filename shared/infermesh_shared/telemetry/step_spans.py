"""The engine-step span: one per scheduler step, placed in the trace of a request it served."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext
from opentelemetry.util.types import AttributeValue

from infermesh_shared.telemetry import semconv


def start_step_span(
    tracer: trace.Tracer,
    request_span_contexts: Sequence[SpanContext],
    attributes: Mapping[str, AttributeValue],
) -> Span | None:
    """A span for one engine step, or None when no request it serves is being traced.

    A step serves many requests but a span has one parent: it becomes a child of the first
    sampled request span in `request_span_contexts` (pass them oldest first, so a lone
    request's trace holds all its steps and their worker calls) and links to every sampled
    one. Steps serving only unsampled requests are not traced, so `tracing_sample_ratio`
    thins steps as it thins requests. The caller makes the span current around the worker
    calls (`trace.use_span(span, end_on_exit=True)`), which makes each worker's Execute
    span its child.
    """
    sampled = [ctx for ctx in request_span_contexts if ctx.is_valid and ctx.trace_flags.sampled]
    if not sampled:
        return None
    parent = trace.set_span_in_context(NonRecordingSpan(sampled[0]))
    return tracer.start_span(
        semconv.SPAN_ENGINE_STEP,
        context=parent,
        kind=trace.SpanKind.INTERNAL,
        attributes=attributes,
        links=[Link(ctx) for ctx in sampled],
    )


@contextlib.contextmanager
def activate_span(span: Span | None) -> Iterator[None]:
    """Makes `span` current inside the block (without ending it); does nothing for None."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield
