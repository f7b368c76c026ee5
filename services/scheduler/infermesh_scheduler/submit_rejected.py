"""The refusal of a Submit, with the gRPC status to answer it with."""

from __future__ import annotations

import grpc

from infermesh_scheduler.core.errors import RequestRefused
from infermesh_scheduler.status_table import status_of_refusal


class SubmitRejected(Exception):
    """A request the scheduler refuses; carries the gRPC status to answer with and, for a bad
    request, the SubmitRequest field at fault (sent as status details: field_violation.py)."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def of(cls, refused: RequestRefused) -> SubmitRejected:
        """The answer to a request the core (or check_request) refused."""
        return cls(*status_of_refusal(refused), refused.field)
