"""Registers this worker with its scheduler, retrying with backoff until it answers."""

from __future__ import annotations

import logging
import time

import grpc
from infermesh.v1 import scheduler_pb2, scheduler_pb2_grpc

logger = logging.getLogger(__name__)


class RegistrationTimeout(Exception):
    """The scheduler did not accept the registration in time."""


def register_with_scheduler(
    channel: grpc.Channel,
    scheduler_address: str,
    address: str,
    device: str,
    worker_name: str,
    timeout_s: float,
    stop_requested=lambda: False,
    before_register=lambda: None,
) -> str:
    """Calls RegisterWorker until it succeeds; returns the worker id the scheduler gave us.

    `before_register` runs before each attempt (the scheduler pin); an OSError from it (the
    scheduler not listening yet) is retried like UNAVAILABLE."""
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    request = scheduler_pb2.RegisterWorkerRequest(address=address, device=device, worker_name=worker_name)
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    attempt = 0
    last_error = ""
    while not stop_requested():
        attempt += 1
        try:
            before_register()
            response = stub.RegisterWorker(request, timeout=10)
            logger.info("registered with scheduler %s as %s", scheduler_address, response.worker_id)
            return response.worker_id
        except grpc.RpcError as exc:
            last_error = f"{exc.code().name}: {exc.details()}"
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # The scheduler answered and refused: retrying the same request will not help.
                raise RegistrationTimeout(
                    f"scheduler {scheduler_address} refused the registration of {address}: {last_error}"
                ) from exc
        except OSError as exc:
            last_error = f"TLS handshake: {exc}"
        if time.monotonic() + delay > deadline:
            break
        if attempt == 1 or attempt % 10 == 0:
            logger.info("scheduler %s not answering yet (%s); retrying", scheduler_address, last_error)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise RegistrationTimeout(
        f"scheduler {scheduler_address} did not accept the registration within {timeout_s:.0f}s "
        f"({attempt} attempts, last error {last_error}); check --scheduler-address and that the "
        "scheduler is running"
    )


class SchedulerWatch:
    """Notices when this worker must register again: its scheduler dropped it (a probe that failed,
    a worker timeout) or restarted and forgot it.

    A probe is CheckWorker with the id the scheduler gave us: NOT_FOUND means "register again". A
    scheduler that does not answer `lost_probes` times in a row and then answers (restarted) is
    asked the same question, so a slow scheduler that still knows us is left alone: registering
    again is treated as a worker restart and rebuilds the group. A scheduler too old for CheckWorker
    (UNIMPLEMENTED) falls back to "came back after being unreachable".
    """

    def __init__(self, channel: grpc.Channel, address: str, timeout_s: float, lost_probes: int = 2) -> None:
        self._address = address
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        self._timeout_s = timeout_s
        self._lost_probes = lost_probes
        self._missed = 0
        self.worker_id = ""

    def probe(self) -> bool:
        """True when this worker should call RegisterWorker again."""
        try:
            self._stub.CheckWorker(
                scheduler_pb2.CheckWorkerRequest(worker_id=self.worker_id, address=self._address),
                timeout=self._timeout_s,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._missed += 1
                if self._missed == self._lost_probes:
                    logger.warning(
                        "scheduler unreachable (%s); will register again when it is back", code.name
                    )
                return False
            came_back = self._missed >= self._lost_probes
            self._missed = 0
            if code == grpc.StatusCode.NOT_FOUND:
                logger.warning("scheduler does not know this worker (%s): registering again", exc.details())
                return True
            return came_back and code == grpc.StatusCode.UNIMPLEMENTED
        self._missed = 0
        return False
