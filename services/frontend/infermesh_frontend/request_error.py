"""A request that fails with a gRPC status: the servicer turns it into the client's status."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """Ends a request with `code` and a message a person can act on; `param` names the request
    field at fault when one is (OpenAI's error `param`)."""

    def __init__(self, code: grpc.StatusCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
