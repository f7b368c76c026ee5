"""The refusal of a Submit, with the gRPC status to answer it with."""

from __future__ import annotations

import grpc


class SubmitRejected(Exception):
    """A request the scheduler refuses; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
