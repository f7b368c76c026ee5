"""The one table from the worker's faults to the gRPC statuses its servicer answers with."""

from __future__ import annotations

import grpc

from infermesh_worker.errors import Fault, WorkerError

FAULT_STATUS: dict[Fault, grpc.StatusCode] = {
    Fault.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Fault.NOT_READY: grpc.StatusCode.FAILED_PRECONDITION,
    Fault.NO_MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Fault.CORRUPTED: grpc.StatusCode.DATA_LOSS,
    Fault.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_of(error: WorkerError) -> tuple[grpc.StatusCode, str]:
    """The status and message a call that failed with `error` ends with."""
    return FAULT_STATUS[error.fault], str(error)
