"""Errors the scheduler core raises at admission."""

from __future__ import annotations


class QueueFullError(Exception):
    """The waiting queue holds max_queue_size requests and the overflow policy refuses this one."""

    def __init__(self, policy: str, message: str) -> None:
        super().__init__(message)
        self.policy = policy
        self.message = message


class InvalidRequestError(ValueError):
    """A request the scheduler can never serve as asked (maps to INVALID_ARGUMENT)."""
