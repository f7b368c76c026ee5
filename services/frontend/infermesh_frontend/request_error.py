"""A request that fails with a gRPC status: the servicer turns it into the client's status."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """Ends a request with `code` and a message a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
