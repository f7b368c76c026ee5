"""The per-request channel from the engine loop to the Submit RPC that streams it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from infermesh_scheduler.core.request import RequestOutput


@dataclass(slots=True, frozen=True)
class StreamError:
    """Ends a stream with a gRPC status instead of a finish reason."""

    code: grpc.StatusCode
    message: str


@dataclass(slots=True, frozen=True)
class StreamMoved:
    """Ends a stream because its request now runs on another replica (live migration)."""

    address: str


class RequestStream:
    """Outputs of one live request, in order; closed by its last output or an error."""

    __slots__ = ("request_id", "closed", "_queue")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # True once the final item was queued: the engine no longer knows the request.
        self.closed = False
        self._queue: asyncio.Queue[RequestOutput | StreamError | StreamMoved] = asyncio.Queue()

    def push(self, output: RequestOutput) -> None:
        """Queues an output; the one carrying usage is the request's last."""
        self._queue.put_nowait(output)
        if output.usage is not None:
            self.closed = True

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """Ends the stream with `code`."""
        self._queue.put_nowait(StreamError(code, message))
        self.closed = True

    def moved(self, address: str) -> None:
        """Ends the stream: the request goes on at `address`."""
        self._queue.put_nowait(StreamMoved(address))
        self.closed = True

    async def get(self) -> RequestOutput | StreamError | StreamMoved:
        """The next item, waiting for it."""
        return await self._queue.get()
