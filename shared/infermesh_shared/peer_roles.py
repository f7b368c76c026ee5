"""Which service role may call which internal RPC, read from the caller's mTLS certificate.

A certificate's common name is its role (`infermesh certs` writes `CN=frontend`, `CN=worker`,
...). Servers on internal hops install `aio_role_interceptor` / `sync_role_interceptor` when they
serve mutual TLS, so a worker certificate cannot `Submit` and a frontend certificate cannot
`RegisterWorker`. A method missing from the table is refused: new RPCs are closed until named.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import grpc

FRONTEND = "frontend"
SCHEDULER = "scheduler"
WORKER = "worker"
RESCHEDULER = "rescheduler"
ROLES = (FRONTEND, SCHEDULER, WORKER, RESCHEDULER)

ANY_ROLE = frozenset(ROLES)

# Method full name prefix -> roles allowed. Health (and reflection when on) answers any
# certificate of the cluster, so probes and operators holding one can ask.
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    "/infermesh.v1.SchedulerService/Submit": frozenset({FRONTEND}),
    "/infermesh.v1.SchedulerService/Abort": frozenset({FRONTEND, RESCHEDULER, SCHEDULER}),
    # Live migration: asked of the source by a frontend or the rescheduler; the source scheduler
    # then drives the destination.
    "/infermesh.v1.SchedulerService/Migrate": frozenset({FRONTEND, RESCHEDULER}),
    "/infermesh.v1.SchedulerService/ReserveMigration": frozenset({SCHEDULER}),
    "/infermesh.v1.SchedulerService/AdoptMigration": frozenset({SCHEDULER}),
    "/infermesh.v1.SchedulerService/CancelMigration": frozenset({SCHEDULER}),
    "/infermesh.v1.SchedulerService/GetLoad": frozenset({FRONTEND, RESCHEDULER}),
    "/infermesh.v1.SchedulerService/GetModelInfo": frozenset({FRONTEND, RESCHEDULER}),
    "/infermesh.v1.SchedulerService/RegisterWorker": frozenset({WORKER}),
    "/infermesh.v1.SchedulerService/CheckWorker": frozenset({WORKER}),
    # KV blocks arrive from the same rank of another group (live migration).
    "/infermesh.v1.WorkerService/ReceiveKVBlocks": frozenset({WORKER}),
    "/infermesh.v1.WorkerService/": frozenset({SCHEDULER}),
    # infermesh-rescheduler's operator RPCs (drain, migrate): an operator holding the rescheduler
    # certificate. (A frontend serves them on its client port, behind its API keys.)
    "/infermesh.v1.ReschedulerService/": frozenset({RESCHEDULER}),
    "/grpc.health.v1.Health/": ANY_ROLE,
    "/grpc.reflection.v1alpha.ServerReflection/": ANY_ROLE,
    "/grpc.reflection.v1.ServerReflection/": ANY_ROLE,
}


def allowed_roles(method: str) -> frozenset[str]:
    """The roles that may call `method` (empty: nobody)."""
    exact = METHOD_ROLES.get(method)
    if exact is not None:
        return exact
    for prefix, roles in METHOD_ROLES.items():
        if prefix.endswith("/") and method.startswith(prefix):
            return roles
    return frozenset()


def peer_role(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> str:
    """The role named by the caller's certificate; "" without a verified certificate."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else ""


def _denial(method: str, role: str, allowed: frozenset[str]) -> str:
    who = f"a {role!r} certificate" if role else "a caller without a cluster certificate"
    if not allowed:
        return f"{method} is not open to any peer"
    return f"{who} may not call {method} (allowed: {', '.join(sorted(allowed))})"


def guard_handler(handler: grpc.RpcMethodHandler, refusal: Callable[[Any], str | None]) -> Any:
    """`handler` with `refusal(context)` run before its behaviour: a message means
    PERMISSION_DENIED with that message (async or sync, as the handler is: an aio server also
    runs sync handlers, e.g. the health servicer, on its thread pool)."""
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    kind = next(k for k in kinds if getattr(handler, k) is not None)
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):

        async def wrapped(request_or_iterator, context):
            if (message := refusal(context)) is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            async for item in behavior(request_or_iterator, context):
                yield item

    elif inspect.iscoroutinefunction(behavior):

        async def wrapped(request_or_iterator, context):
            if (message := refusal(context)) is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            return await behavior(request_or_iterator, context)

    elif kind.endswith("_stream"):

        def wrapped(request_or_iterator, context):
            if (message := refusal(context)) is not None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            yield from behavior(request_or_iterator, context)

    else:

        def wrapped(request_or_iterator, context):
            if (message := refusal(context)) is not None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            return behavior(request_or_iterator, context)

    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _role_refusal(method: str) -> Callable[[Any], str | None]:
    allowed = allowed_roles(method)

    def refusal(context) -> str | None:
        role = peer_role(context)
        return None if role in allowed else _denial(method, role, allowed)

    return refusal


class AioRoleInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (PERMISSION_DENIED) a call whose certificate role may not call the method."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return guard_handler(handler, _role_refusal(method))


class SyncRoleInterceptor(grpc.ServerInterceptor):
    """The thread-pool server's twin of AioRoleInterceptor."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return guard_handler(handler, _role_refusal(method))
