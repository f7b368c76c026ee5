"""One generation request's trip through a scheduler: Submit, collect, cut at stops, Abort."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2

from infermesh_frontend.completion_output import CompletionDelta, CompletionOutput
from infermesh_frontend.request_error import RequestError
from infermesh_frontend.scheduler_pool import (
    NoSchedulerError,
    RequestContext,
    SchedulerPool,
    SchedulerReplica,
)

logger = logging.getLogger(__name__)

# Extra time the gRPC call gets beyond the request's own timeout, so the scheduler's own
# DEADLINE_EXCEEDED (which frees the request's blocks) normally arrives first.
DEADLINE_GRACE_S = 1.0


@dataclass(slots=True)
class PreparedRequest:
    """A validated request, ready to submit."""

    submit: scheduler_pb2.SubmitRequest
    stop_strings: list[str]
    context: RequestContext
    # Time allowed for the whole request (ms); 0 means none.
    timeout_ms: int = 0
    # Replicas the request may be tried on (it moves on only while none has answered yet).
    max_attempts: int = 3


class Generation:
    """Runs one request on a scheduler replica and yields completion deltas as they come.

    Whatever way the stream ends early (all completions hit a stop string, the client went
    away, a timeout), the Submit call is cancelled and the scheduler is sent Abort so the
    request's KV blocks are freed at once.
    """

    def __init__(
        self, pool: SchedulerPool, request: PreparedRequest, decode: Callable[[list[int]], str]
    ) -> None:
        self._pool = pool
        self._request = request
        prompt = list(request.submit.prompt_token_ids)
        self.outputs = [
            CompletionOutput(index, decode, prompt, request.stop_strings)
            for index in range(request.submit.sampling.n)
        ]
        self.scheduler_usage: common_pb2.Usage | None = None
        self.replica: SchedulerReplica | None = None

    @property
    def request_id(self) -> str:
        """The id the scheduler knows this request by."""
        return self._request.submit.request_id

    @property
    def finished(self) -> bool:
        """True once every completion ended."""
        return all(output.finished for output in self.outputs)

    def usage(self) -> common_pb2.Usage:
        """The scheduler's usage when the request ran to its end there; counted here otherwise."""
        if self.scheduler_usage is not None:
            return self.scheduler_usage
        return common_pb2.Usage(
            prompt_tokens=len(self._request.submit.prompt_token_ids),
            completion_tokens=sum(len(output.token_ids) for output in self.outputs),
        )

    async def stream(self) -> AsyncIterator[CompletionDelta]:
        """Yields deltas until every completion ended; the request's last delta carries usage.

        Raises RequestError with the scheduler's status (or UNAVAILABLE when none is reachable).
        """
        tried: list[SchedulerReplica] = []
        while True:
            try:
                replica = self._pool.pick(self._request.context, exclude=tried)
            except NoSchedulerError as error:
                raise RequestError(
                    grpc.StatusCode.UNAVAILABLE, f"{error}; start a scheduler or fix --scheduler-addresses"
                ) from error
            tried.append(replica)
            self.replica = replica
            retry = False
            is_last = len(tried) >= min(len(self._pool.replicas), max(1, self._request.max_attempts))
            # aclosing: when our consumer stops early, the replica stream's cleanup (Abort) runs now.
            async with contextlib.aclosing(self._stream_from(replica, is_last_replica=is_last)) as deltas:
                async for delta in deltas:
                    if delta is None:
                        retry = True
                        break
                    delta.request_id = self.request_id
                    yield delta
            if not retry:
                return

    async def _stream_from(
        self, replica: SchedulerReplica, is_last_replica: bool
    ) -> AsyncIterator[CompletionDelta | None]:
        """Streams from one replica; yields None (and stops) when the request may go to another one."""
        timeout_ms = self._request.timeout_ms
        timeout_s = timeout_ms / 1000 + DEADLINE_GRACE_S if timeout_ms else None
        call = replica.stub.Submit(self._request.submit, timeout=timeout_s)
        scheduler_done = False
        received = False
        try:
            async for response in call:
                if not received:
                    received = True
                    self._pool.report_result(replica, None)
                if response.HasField("usage"):
                    # The request's last message: the scheduler has nothing left to abort.
                    self.scheduler_usage = response.usage
                    scheduler_done = True
                delta = self._take(response)
                if delta is not None:
                    if self.finished:
                        delta.usage = self.usage()
                    yield delta
                if self.finished:
                    return
            scheduler_done = True
            # The stream ended without finishing some completions (e.g. aborted at the scheduler).
            unfinished = [output for output in self.outputs if not output.finished]
            for position, output in enumerate(unfinished):
                delta = output.end_without_scheduler(common_pb2.FINISH_REASON_ABORT)
                if position == len(unfinished) - 1:
                    delta.usage = self.usage()
                yield delta
        except grpc.aio.AioRpcError as error:
            code = error.code()
            scheduler_done = code != grpc.StatusCode.DEADLINE_EXCEEDED
            if code == grpc.StatusCode.UNAVAILABLE and not received:
                transport_failed = replica.channel.get_state() != grpc.ChannelConnectivity.READY
                self._pool.report_result(replica, code if transport_failed else None)
                if not is_last_replica:
                    logger.warning(
                        "scheduler %s unavailable (%s); trying another", replica.address, error.details()
                    )
                    yield None
                    return
                if transport_failed:
                    raise RequestError(
                        code,
                        f"no scheduler replica is reachable at {', '.join(self._pool.addresses)} "
                        f"(last error: {error.details()}); start a scheduler or fix --scheduler-addresses",
                    ) from error
            else:
                self._pool.report_result(replica, code)
            if code == grpc.StatusCode.UNAVAILABLE and received:
                raise RequestError(
                    code,
                    f"scheduler {replica.address} went away in the middle of the request: {error.details()}",
                ) from error
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and "Deadline Exceeded" in (error.details() or ""):
                # gRPC's own deadline on our call fired (its wording, not the scheduler's message).
                raise RequestError(
                    code, f"the request did not finish within its timeout of {timeout_ms} ms"
                ) from error
            # Everything else is the scheduler's own verdict: pass its status and message on as is.
            raise RequestError(code, error.details() or code.name) from error
        finally:
            if not scheduler_done:
                call.cancel()
                self._pool.send_abort(replica, self.request_id)

    def _take(self, response: scheduler_pb2.SubmitResponse) -> CompletionDelta | None:
        if response.index >= len(self.outputs):
            raise RequestError(
                grpc.StatusCode.INTERNAL,
                f"scheduler sent completion index {response.index} for a request with n={len(self.outputs)}",
            )
        return self.outputs[response.index].add(response.token_ids, response.logprobs, response.finish_reason)
