"""The span of one worker-group formation (Reset, LoadModel, InitKVCache on every member).

Formation runs after the RegisterWorker call that completed the group has answered, so its
calls cannot be children of that call's span: a UI would draw children starting after their
parent ended. Each formation is its own trace instead, linked to the registration that started it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from infermesh_shared.telemetry import get_tracer, tracing_enabled
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link

SPAN_FORM_GROUP = "infermesh.scheduler.form_group"
WORLD_SIZE = "infermesh.worker_group.world_size"


@contextlib.contextmanager
def forming_span(world_size: int) -> Iterator[None]:
    """Makes a new root span current around a formation; it ends when the block does."""
    if not tracing_enabled():
        yield
        return
    started_by = trace.get_current_span().get_span_context()
    span = get_tracer("infermesh.scheduler").start_span(
        SPAN_FORM_GROUP,
        context=otel_context.Context(),
        links=[Link(started_by)] if started_by.is_valid else [],
        attributes={WORLD_SIZE: world_size},
    )
    with trace.use_span(span, end_on_exit=True):
        yield
