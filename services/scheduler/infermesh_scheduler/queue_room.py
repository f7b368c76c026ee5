"""Submits waiting for room in a full queue (queue_overflow_policy=block), woken together
whenever room may have appeared."""

from __future__ import annotations

import asyncio
import time

import grpc

from infermesh_scheduler.submit_rejected import SubmitRejected


class QueueRoom:
    """Where a Submit waits for room, bounded by its deadline and its queue_timeout_ms."""

    def __init__(self, default_queue_timeout_ms: int) -> None:
        # The scheduler's queue_timeout_ms: the bound of a request that sets none (0: no bound).
        self._default_timeout_ms = default_queue_timeout_ms
        # Replaced after each signal so that every waiter of the old one wakes exactly once.
        self._room = asyncio.Event()
        self.waiters = 0

    def queue_deadline(self, queue_timeout_ms: int) -> tuple[float, int] | None:
        """(time.monotonic() instant, the ms it came from) by which a request must be queued."""
        timeout_ms = queue_timeout_ms or self._default_timeout_ms
        return (time.monotonic() + timeout_ms / 1000, timeout_ms) if timeout_ms else None

    async def wait(self, deadline: float | None, queue_deadline: tuple[float, int] | None) -> None:
        """Returns when room may have appeared; raises SubmitRejected when a bound passes first."""
        room = self._room
        queue_first = queue_deadline is not None and (deadline is None or queue_deadline[0] < deadline)
        until = queue_deadline[0] if queue_deadline is not None and queue_first else deadline
        timeout = None if until is None else max(0.0, until - time.monotonic())
        self.waiters += 1
        try:
            await asyncio.wait_for(room.wait(), timeout)
        except asyncio.TimeoutError:
            if queue_deadline is not None and queue_first:
                raise SubmitRejected(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the queue stayed full for queue_timeout_ms={queue_deadline[1]} "
                    "(queue_overflow_policy=block): retry later or on another replica",
                ) from None
            raise SubmitRejected(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the request's deadline passed while it waited for room in the full queue "
                "(queue_overflow_policy=block)",
            ) from None
        finally:
            self.waiters -= 1

    def signal(self) -> None:
        """Wakes every waiter: each tries to queue again."""
        room, self._room = self._room, asyncio.Event()
        room.set()
