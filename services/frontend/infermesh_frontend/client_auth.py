"""Client API keys: who may call the frontend, and which tenant a call belongs to.

Keys come from `api_keys`, the file `api_keys_file` (one key a line, `#` comments) and the
`INFERMESH_API_KEY` environment variable. A client sends `authorization: Bearer KEY` (HTTP header
or gRPC metadata, as the `openai` client does). Health checks and /metrics stay open. A tenant is
named by a digest of its key, never the key itself, so ids and logs never carry a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger(__name__)

ENV_VAR = "INFERMESH_API_KEY"
# gRPC services a probe or a client may call without a key.
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MISSING_KEY = "missing API key: send the header 'Authorization: Bearer <key>'"
WRONG_KEY = "invalid API key"


class ApiKeyConfigError(ValueError):
    """api_keys_file cannot be read, or a key is empty."""


def tenant_of_key(key: str) -> str:
    """The tenant name of a key: a short digest (safe to log, to put in ids and cache salts)."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:16]


# A salt names a namespace; it is hashed into every block's key, so it need not be long.
MAX_CACHE_SALT_CHARS = 256


def tenant_cache_salt(tenant: str, client_salt: str) -> str:
    """The prefix-cache namespace of a request: its tenant's, narrowed by the client's own
    cache_salt. A client cannot pick another tenant's namespace: the tenant always leads."""
    return f"{tenant}|{client_salt}" if tenant or client_salt else ""


def bearer_token(value: str | None) -> str:
    """The token of an `authorization: Bearer TOKEN` value ("" when absent or another scheme)."""
    if not value:
        return ""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class ApiKeys:
    """The configured keys; empty means the frontend is open (logged once at start)."""

    def __init__(self, keys: Iterable[str], operator_keys: Iterable[str] = ()) -> None:
        operators = list(operator_keys)
        # An operator key is a client key too (the same interceptor lets it in).
        self._keys = [k.encode() for k in dict.fromkeys([*keys, *operators])]
        self._operator_keys = [k.encode() for k in dict.fromkeys(operators)]

    @classmethod
    def from_config(cls, cfg: Any, environ: dict[str, str] | None = None) -> ApiKeys:
        environ = os.environ if environ is None else environ
        keys = [k.strip() for k in getattr(cfg, "api_keys", []) or []]
        keys += _key_file(getattr(cfg, "api_keys_file", "") or "", "api_keys_file")
        if environ.get(ENV_VAR, "").strip():
            keys.append(environ[ENV_VAR].strip())
        if any(not k for k in keys):
            raise ApiKeyConfigError("api_keys holds an empty key")
        operators = _key_file(getattr(cfg, "operator_api_keys_file", "") or "", "operator_api_keys_file")
        return cls(keys, operators)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def operator_refusal(self, authorization: str | None) -> str:
        """Why a caller may not use the operator RPCs ("" when it may): with keys configured only
        an operator key may; an open frontend is open for them too."""
        if not self._keys:
            return ""
        candidate = bearer_token(authorization).encode()
        matched = False
        for key in self._operator_keys:
            matched |= hmac.compare_digest(candidate, key)
        if matched:
            return ""
        return "ReschedulerService (drain, migrate) needs an operator key (operator_api_keys_file)"

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, authorization: str | None) -> tuple[str, str]:
        """(tenant, "") for an accepted `authorization` value, ("", why) otherwise.

        With no keys configured every caller is accepted as the anonymous tenant "".
        """
        if not self._keys:
            return "", ""
        token = bearer_token(authorization)
        if not token:
            return "", MISSING_KEY
        candidate = token.encode()
        # Compare against every key, always: the time taken does not tell which key came close.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return (tenant_of_key(token), "") if matched else ("", WRONG_KEY)


def _key_file(path: str, option: str) -> list[str]:
    """The keys of a key file, one a line, `#` comments; [] without a path."""
    if not path:
        return []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ApiKeyConfigError(f"{option} {path!r} cannot be read: {err.strerror or err}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def grpc_authorization(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The `authorization` value of gRPC invocation metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class AioApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a FrontendService call without a valid key; health stays open."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not self._keys.enabled or method.startswith(OPEN_GRPC_PREFIXES):
            return await continuation(handler_call_details)
        _, why = self._keys.authenticate(grpc_authorization(handler_call_details.invocation_metadata))
        if not why:
            return await continuation(handler_call_details)
        return _refusal_handler(await continuation(handler_call_details), why)


def _refusal_handler(handler: grpc.RpcMethodHandler | None, why: str) -> grpc.RpcMethodHandler:
    async def refuse(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    async def refuse_stream(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        yield  # pragma: no cover - abort raises

    if handler is not None and handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream, handler.request_deserializer, handler.response_serializer
        )
    deserializer = handler.request_deserializer if handler is not None else None
    serializer = handler.response_serializer if handler is not None else None
    return grpc.unary_unary_rpc_method_handler(refuse, deserializer, serializer)
