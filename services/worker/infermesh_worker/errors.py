"""Worker errors that carry the gRPC status a caller should see."""

from __future__ import annotations

import grpc


class WorkerError(Exception):
    """An error with a gRPC status code; the message tells a person what to change."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgumentError(WorkerError):
    """The request itself is wrong (bad dtype, block id out of range, unsupported model)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPreconditionError(WorkerError):
    """The request is valid but the worker is not in a state to run it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(WorkerError):
    """The request needs more memory than the worker has."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
