"""OpenAI-shaped HTTP errors, and the HTTP status each gRPC status maps to."""

from __future__ import annotations

import grpc

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Statuses that mean "try again later": they carry Retry-After, in seconds (the queue or the
# replica set usually changes within a second; clients back off further on repeats).
_RETRY_LATER = frozenset({429, 503})
RETRY_AFTER_S = 1
_ERROR_TYPE = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """Ends an HTTP request with `status` and an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @classmethod
    def from_grpc(cls, code: grpc.StatusCode, message: str, param: str | None = None) -> ApiError:
        """The HTTP form of a request that failed with gRPC status `code`, naming `param`."""
        return cls(_HTTP_STATUS.get(code, 500), message, param=param, code=code.name.lower())

    def headers(self) -> dict[str, str]:
        """Retry-After on every 429 and 503."""
        return {"Retry-After": str(RETRY_AFTER_S)} if self.status in _RETRY_LATER else {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": _ERROR_TYPE.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None) -> ApiError:
    """A 400 for a request field the client must change."""
    return ApiError(400, message, param=param, code="invalid_value" if param else None)
