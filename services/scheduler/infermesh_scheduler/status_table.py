"""The one table from the scheduler core's outcomes to the gRPC statuses the scheduler answers with."""

from __future__ import annotations

import grpc

from infermesh_scheduler.core.errors import EndReason, Refusal, RequestRefused
from infermesh_scheduler.core.request import AdmissionError

REFUSAL_STATUS: dict[Refusal, grpc.StatusCode] = {
    Refusal.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

END_STATUS: dict[EndReason, grpc.StatusCode] = {
    EndReason.DROPPED_FOR_NEWER: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EndReason.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of_refusal(refused: RequestRefused) -> tuple[grpc.StatusCode, str]:
    """The status and message Submit answers a refused request with."""
    return REFUSAL_STATUS[refused.reason], refused.message


def status_of_end(error: AdmissionError) -> tuple[grpc.StatusCode, str]:
    """The status and message a request's stream ends with when the core ended it itself."""
    return END_STATUS[error.reason], error.message
