"""Why the worker refuses a call: domain values, never wire statuses (status_table.py maps them)."""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    """What kind of failure a WorkerError is."""

    INVALID = "invalid"  # the request itself is wrong
    NOT_READY = "not_ready"  # valid, but the worker is not in a state to run it
    NO_MEMORY = "no_memory"  # it needs more memory than the worker has
    CORRUPTED = "corrupted"  # data arrived damaged
    INTERNAL = "internal"  # a bug or an unexpected failure here


class WorkerError(Exception):
    """A refused call; `fault` says what kind, the message what a person should change."""

    fault: Fault = Fault.INTERNAL


class InvalidArgumentError(WorkerError):
    """The request itself is wrong (bad dtype, block id out of range, unsupported model)."""

    fault = Fault.INVALID


class FailedPreconditionError(WorkerError):
    """The request is valid but the worker is not in a state to run it."""

    fault = Fault.NOT_READY


class ResourceExhaustedError(WorkerError):
    """The request needs more memory than the worker has."""

    fault = Fault.NO_MEMORY
