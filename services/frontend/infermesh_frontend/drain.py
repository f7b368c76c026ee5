"""Graceful shutdown of the frontend: refuse new requests, let the running ones finish until
the drain timeout, then end what is left with UNAVAILABLE "server shutting down".

Every API (gRPC, HTTP) runs its requests through RequestRunner.run, which asks `admit` before
any work and reads its deltas through `bounded`; so one Drain covers both transports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from infermesh_frontend.request_error import RequestError

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "server shutting down"
# After the timeout, how long the ended requests get to send their final status.
_FINAL_STATUS_GRACE_S = 2.0

Item = TypeVar("Item")


@dataclass(eq=False, slots=True)
class _Running:
    task: asyncio.Task | None
    # True while the request waits for its next delta: only then may the drain interrupt it
    # (anywhere else the request is writing to its client and checks `ended` right after).
    waiting: bool = False
    ended_by_drain: bool = field(default=False)


class Drain:
    """Counts the requests in flight and ends them when a drain runs out of time."""

    def __init__(self) -> None:
        self.draining = False
        self._expired = False
        self._running: set[_Running] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def admit(self) -> None:
        """Raises UNAVAILABLE once the drain began: the client retries on another frontend."""
        if self.draining:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def bounded(self, source: AsyncIterator[Item]) -> AsyncIterator[Item]:
        """`source`'s items until it ends, or RequestError(UNAVAILABLE) once the drain expired."""
        running = _Running(asyncio.current_task())
        self._running.add(running)
        self._idle.clear()
        try:
            while True:
                if self._expired:
                    raise RequestError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                running.waiting = True
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    # The drain's cancel (not the client's): end with the documented status.
                    if running.ended_by_drain and running.task is not None and running.task.uncancel() == 0:
                        raise RequestError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN) from None
                    raise
                finally:
                    running.waiting = False
                yield item
        finally:
            self._running.discard(running)
            if not self._running:
                self._idle.set()

    async def drain(self, timeout_s: float) -> None:
        """Refuses new requests, waits up to `timeout_s` for the running ones, ends the rest."""
        self.draining = True
        logger.info("draining: %d request(s) in flight, up to %.1f s", self.in_flight, timeout_s)
        if await self._wait_idle(timeout_s):
            logger.info("drained: every request finished")
            return
        self._expired = True
        logger.warning("drain timeout: ending %d request(s) with UNAVAILABLE", self.in_flight)
        for running in list(self._running):
            running.ended_by_drain = True
            if running.waiting and running.task is not None:
                running.task.cancel()
        await self._wait_idle(_FINAL_STATUS_GRACE_S)

    async def _wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
