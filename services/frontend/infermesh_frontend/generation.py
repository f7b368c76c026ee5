"""One generation request's trip through a scheduler: Submit, collect, cut at stops, Abort."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from infermesh.v1 import common_pb2, scheduler_pb2
from infermesh_shared.field_violation import violated_field
from infermesh_shared.telemetry import activate_span

from infermesh_frontend.attempt_outcome import AttemptOutcome, Done, Fail, Failover, Moved
from infermesh_frontend.completion_output import CompletionDelta, CompletionOutput
from infermesh_frontend.detokenizer import Detokenizer
from infermesh_frontend.request_error import RequestError, client_field
from infermesh_frontend.request_tracing import RequestTrace
from infermesh_frontend.routing import RouteRequest
from infermesh_frontend.scheduler_pool import NoSchedulerError, SchedulerPool, SchedulerReplica

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedRequest:
    """A validated request, ready to submit."""

    submit: scheduler_pb2.SubmitRequest
    stop_strings: list[str]
    # Requests of one session go to the same replica (session affinity), when the policy uses it.
    session_id: str = ""
    # Time allowed for the whole request (ms); 0 means none.
    timeout_ms: int = 0
    # Replicas the request may be tried on (it moves on only while none has answered yet).
    max_attempts: int = 3
    # The id the client gave (echoed back to it); the scheduler only ever sees submit.request_id,
    # which the frontend made unique, so clients cannot collide with or abort each other's.
    client_request_id: str = ""
    # time.monotonic() by which the request must end (from timeout_ms); None means none. Each
    # Submit call carries what is left of it as its gRPC deadline, so a failover does not
    # restart the clock and no host compares another host's wall clock.
    deadline: float | None = None
    # Text options: special tokens left out, a matched stop string kept at the end.
    skip_special_tokens: bool = True
    include_stop_str: bool = False

    @property
    def route(self) -> RouteRequest:
        """What the dispatch policy looks at to choose a replica (read from the submit itself)."""
        return RouteRequest(self.submit.prompt_token_ids, self.session_id, self.submit.cache_salt)


class Generation:
    """Runs one request on a scheduler replica and yields completion deltas as they come.

    Whatever way the stream ends early (all completions hit a stop string, the client went
    away, a timeout), the Submit call is cancelled and the scheduler is sent Abort so the
    request's KV blocks are freed at once.
    """

    def __init__(
        self,
        pool: SchedulerPool,
        request: PreparedRequest,
        new_detokenizer: Callable[[Sequence[int]], Detokenizer],
        request_trace: RequestTrace | None = None,
    ) -> None:
        self._pool = pool
        self._request = request
        self._trace = request_trace or RequestTrace(stream=False, enabled=False)
        prompt = list(request.submit.prompt_token_ids)
        self.outputs = [
            CompletionOutput(index, new_detokenizer, prompt, request.stop_strings, request.include_stop_str)
            for index in range(request.submit.sampling.n)
        ]
        self.scheduler_usage: common_pb2.Usage | None = None
        self.replica: SchedulerReplica | None = None

    @property
    def request_id(self) -> str:
        """The id the scheduler knows this request by."""
        return self._request.submit.request_id

    @property
    def reply_id(self) -> str:
        """The id the client knows this request by: its own when it gave one."""
        return self._request.client_request_id or self.request_id

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
        moved_to: str | None = None
        while True:
            if moved_to is not None:
                # Following a live migration: attach to the destination's stream of this request.
                replica = self._pool.take(moved_to)
                if replica is None:
                    raise RequestError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the request migrated to scheduler {moved_to}, which this frontend does not know",
                    )
            else:
                try:
                    replica = self._pool.pick(self._request.route, exclude=tried)
                except NoSchedulerError as error:
                    raise RequestError(
                        grpc.StatusCode.UNAVAILABLE, f"{error}; {self._pool.discovery_hint}"
                    ) from error
            submit = self._submit_request()
            submit.attach_migrated = moved_to is not None
            moved_to = None
            tried.append(replica)
            self.replica = replica
            is_last = len(tried) >= min(len(self._pool.replicas), max(1, self._request.max_attempts))
            outcome: AttemptOutcome = Done()
            # aclosing: when our consumer stops early, the attempt's cleanup (Abort) runs now.
            async with contextlib.aclosing(self._attempt(replica, submit, is_last)) as items:
                async for item in items:
                    if not isinstance(item, CompletionDelta):
                        outcome = item
                        break
                    item.request_id = self.reply_id
                    yield item
            if isinstance(outcome, Fail):
                raise outcome.error
            if isinstance(outcome, Done):
                return
            if isinstance(outcome, Moved):
                moved_to = outcome.address
                continue
            if outcome.reason is not None:
                self._pool.record_failover(outcome.reason)

    def _submit_request(self) -> scheduler_pb2.SubmitRequest:
        """A fresh SubmitRequest for the next attempt: the prepared one, continuing from the tokens
        streamed so far (the prepared message itself is never edited)."""
        submit = scheduler_pb2.SubmitRequest()
        submit.CopyFrom(self._request.submit)
        if len(self.outputs) == 1:
            submit.resumed_output_token_ids.extend(self.outputs[0].token_ids)
        return submit

    async def _attempt(
        self, replica: SchedulerReplica, submit: scheduler_pb2.SubmitRequest, is_last_replica: bool
    ) -> AsyncIterator[CompletionDelta | AttemptOutcome]:
        """Streams the request from one replica: its deltas, then (only when the request does not
        simply end there) one AttemptOutcome. Failover before the first token when the replica is
        unavailable, or mid-stream when it dies or stops answering (then from the tokens already
        streamed); Fail for the scheduler's own verdict or when no replica is left."""
        deadline = self._request.deadline
        timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        # Created with the stream span current, so the scheduler's spans join this request's trace.
        stream_span = self._trace.start_stream(replica.address)
        with activate_span(stream_span):
            call = replica.stub.Submit(submit, timeout=timeout_s)
        watchdog = _StallWatchdog(call, replica, self._pool)
        scheduler_done = False
        received = False
        failure: grpc.StatusCode | None = None
        try:
            async for response in call:
                watchdog.heard()
                if not received:
                    received = True
                    self._pool.report_result(replica, None)
                if response.migrated_to:
                    # The request left this replica with its KV; nothing to abort here.
                    scheduler_done = True
                    yield Moved(response.migrated_to)
                    return
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
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
            failure = _stream_failure(error, watchdog.stalled)
            if not watchdog.stalled:
                if isinstance(error, asyncio.CancelledError):
                    raise  # our own task is being cancelled (the client went away)
                # A deadline that fired on our side leaves the request live at the scheduler.
                scheduler_done = error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                yield self._outcome_of(error, replica, received, is_last_replica)
                return
            # The replica is DOWN and this stream went quiet: take the request elsewhere.
            self._pool.report_result(replica, grpc.StatusCode.UNAVAILABLE)
            yield self._failover_or_fail(
                grpc.StatusCode.UNAVAILABLE,
                f"scheduler {replica.address} stopped answering",
                "stalled",
                received,
                is_last_replica,
            )
        finally:
            RequestTrace.end_stream(stream_span, failure)
            watchdog.cancel()
            self._pool.release(replica)
            if not scheduler_done:
                call.cancel()
                self._pool.send_abort(replica, self.request_id)

    def _outcome_of(
        self, error: grpc.aio.AioRpcError, replica: SchedulerReplica, received: bool, is_last_replica: bool
    ) -> AttemptOutcome:
        """What a Submit call that ended with `error` means for the request."""
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE and not received:
            transport_failed = replica.channel.get_state() != grpc.ChannelConnectivity.READY
            self._pool.report_result(replica, code if transport_failed else None)
            if not is_last_replica:
                logger.warning(
                    "scheduler %s unavailable (%s); trying another", replica.address, error.details()
                )
                return Failover(None)
            if transport_failed:
                return Fail(
                    RequestError(
                        code,
                        f"no scheduler replica is reachable at {', '.join(self._pool.addresses)} "
                        f"(last error: {error.details()}); {self._pool.discovery_hint}",
                    )
                )
        elif code == grpc.StatusCode.UNAVAILABLE:
            # Mid-stream: the replica died, shut down, or lost its workers for good.
            self._pool.report_result(replica, code)
            reason = f"scheduler {replica.address} went away in the middle of the request: {error.details()}"
            return self._failover_or_fail(code, reason, "unavailable", received, is_last_replica)
        else:
            self._pool.report_result(replica, code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and "Deadline Exceeded" in (error.details() or ""):
            # gRPC's own deadline on our call fired (its wording, not the scheduler's message).
            timeout_ms = self._request.timeout_ms
            return Fail(
                RequestError(code, f"the request did not finish within its timeout of {timeout_ms} ms")
            )
        # Everything else is the scheduler's own verdict: pass its status, message and the field
        # it names on as they are.
        field = client_field(violated_field(error.trailing_metadata()))
        return Fail(RequestError(code, error.details() or code.name, field))

    def _failover_or_fail(
        self, code: grpc.StatusCode, reason: str, label: str, received: bool, is_last_replica: bool
    ) -> AttemptOutcome:
        """Failover to another replica when one is left and the request can continue there."""
        if received and len(self.outputs) != 1:
            return Fail(
                RequestError(code, f"{reason}; a request with n > 1 cannot be resumed on another replica")
            )
        streamed = len(self.outputs[0].token_ids) if received else 0
        if is_last_replica or streamed >= self._request.submit.sampling.max_tokens:
            return Fail(
                RequestError(
                    code,
                    f"{reason}; no other scheduler replica is left to continue on (failover_max_attempts)",
                )
            )
        logger.warning(
            "%s; request %s goes on at another replica after %d tokens", reason, self.request_id, streamed
        )
        return Failover(label)

    def _take(self, response: scheduler_pb2.SubmitResponse) -> CompletionDelta | None:
        if response.index >= len(self.outputs):
            raise RequestError(
                grpc.StatusCode.INTERNAL,
                f"scheduler sent completion index {response.index} for a request with n={len(self.outputs)}",
            )
        output = self.outputs[response.index]
        with self._trace.detokenizing():
            top = [(list(t.token_ids), list(t.logprobs)) for t in response.top_logprobs]
            return output.add(response.token_ids, response.logprobs, response.finish_reason, top)


class _StallWatchdog:
    """Cancels a Submit call whose replica is DOWN (its polls fail) and that has been silent for
    the pool's stall timeout: a replica that stops answering without closing its connections
    would otherwise hold the stream forever. `stalled` tells the reader why its call ended."""

    def __init__(
        self, call: grpc.aio.UnaryStreamCall, replica: SchedulerReplica, pool: SchedulerPool
    ) -> None:
        self.stalled = False
        self._call = call
        self._replica = replica
        self._pool = pool
        self._last_heard = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(pool.stall_timeout_s, self._check)

    def heard(self) -> None:
        self._last_heard = time.monotonic()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        timeout_s = self._pool.stall_timeout_s
        silent_s = time.monotonic() - self._last_heard
        if self._pool.is_down(self._replica) and silent_s >= timeout_s:
            self.stalled = True
            self._handle = None
            self._call.cancel()
            return
        self._handle = self._loop.call_later(max(timeout_s - silent_s, timeout_s / 4), self._check)


def _stream_failure(error: BaseException, stalled: bool) -> grpc.StatusCode:
    """How one replica's stream failed, for its trace span."""
    if stalled:
        return grpc.StatusCode.UNAVAILABLE
    return error.code() if isinstance(error, grpc.aio.AioRpcError) else grpc.StatusCode.CANCELLED
