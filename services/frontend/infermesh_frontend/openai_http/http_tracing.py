"""A SERVER span per HTTP request, as the OpenTelemetry HTTP conventions describe it.

Named `{method} {route}` (the route template, not the path: `/v1/models/{model_id}` stays one
name), with `http.request.method`, `http.route`, `url.path` and `http.response.status_code`.
Only a 5xx answer marks the span ERROR: a 4xx is the client's mistake (a wrong model name is a
404 `model_not_found`, not a server failure), so it carries no error status and no stack trace.
The span continues the client's `traceparent`; the generation's spans are its children.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from infermesh_shared.telemetry import extract_context_from_headers, get_tracer, tracing_enabled
from opentelemetry import trace
from opentelemetry.trace import StatusCode

HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
ERROR_TYPE = "error.type"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def trace_http_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: sees the status every other middleware settled on."""
    if not tracing_enabled():
        return await handler(request)
    route = _route(request)
    span = get_tracer("infermesh.frontend.http").start_span(
        f"{request.method} {route}",
        context=extract_context_from_headers(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={HTTP_REQUEST_METHOD: request.method, HTTP_ROUTE: route, URL_PATH: request.path},
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            response = await handler(request)
        except web.HTTPException as error:
            _set_status(span, error.status)
            raise
        except BaseException as error:
            # Not turned into an answer by the error middleware: a server fault (or a hang-up).
            span.set_attribute(ERROR_TYPE, type(error).__qualname__)
            if isinstance(error, Exception):
                span.record_exception(error)
                _set_status(span, 500)
            raise
        _set_status(span, response.status)
        return response


def _set_status(span: trace.Span, status: int) -> None:
    span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
    if status >= 500:
        span.set_attribute(ERROR_TYPE, str(status))
        span.set_status(StatusCode.ERROR)
