"""The HTTP API's API-key check, as aiohttp middleware: 401 in the OpenAI error shape.

Kept apart from the routes so the endpoints can change without touching authentication.
"""

from __future__ import annotations

from aiohttp import web

from infermesh_frontend.client_auth import ApiKeys

# Paths a load balancer probes without a key.
OPEN_PATHS = frozenset({"/health", "/healthz", "/ping"})


def unauthorized(message: str) -> web.Response:
    """The 401 the OpenAI API answers for a missing or wrong key."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    body = {"error": error}
    return web.json_response(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="infermesh"'})


def api_key_middleware(keys: ApiKeys):
    """Middleware that refuses requests without a valid key and records the caller's tenant."""

    @web.middleware
    async def check_api_key(request: web.Request, handler):
        if request.path in OPEN_PATHS:
            return await handler(request)
        tenant, why = keys.authenticate(request.headers.get("Authorization"))
        if why:
            return unauthorized(why)
        request["tenant"] = tenant
        return await handler(request)

    return check_api_key


def request_tenant(request: web.Request) -> str:
    """The tenant the middleware found for `request` ("" when keys are off)."""
    return request.get("tenant", "")
