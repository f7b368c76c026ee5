"""Why the scheduler core refuses or ends requests: domain values, never wire statuses (each
service maps them to its own statuses in one table, e.g. infermesh_scheduler/status_table.py)."""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    """Why add_request() refused a request."""

    INVALID = "invalid"  # it can never be served as asked (check_request's rules, a live id)
    QUEUE_FULL = "queue_full"  # max_queue_size requests wait and the overflow policy refuses it


class EndReason(enum.Enum):
    """Why the core ended a live request itself (its outputs finish with FinishReason.ABORT)."""

    DROPPED_FOR_NEWER = "dropped_for_newer"  # queue_overflow_policy=drop_oldest made room with it
    DEADLINE = "deadline"  # its timeout ran out before it finished


class RequestRefused(Exception):
    """add_request() refused the request; `reason` says why, `message` what to change."""

    reason: Refusal
    # The SubmitRequest field at fault (a path such as "sampling.max_tokens"), when one is.
    field: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFullError(RequestRefused):
    """The waiting queue holds max_queue_size requests and the overflow policy refuses this one."""

    reason = Refusal.QUEUE_FULL

    def __init__(self, policy: str, message: str) -> None:
        super().__init__(message)
        self.policy = policy


class InvalidRequestError(RequestRefused, ValueError):
    """A request the scheduler can never serve as asked."""

    reason = Refusal.INVALID

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
