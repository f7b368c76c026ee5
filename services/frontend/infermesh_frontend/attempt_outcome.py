"""How one attempt of a request at one scheduler replica ended: the request is done, goes on at
another replica, or fails. Generation decides the next step from this value alone."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh_frontend.request_error import RequestError


@dataclass(frozen=True, slots=True)
class Done:
    """The request ended at this replica: every completion finished, or its stream ended."""


@dataclass(frozen=True, slots=True)
class Failover:
    """The request goes on at another replica, from the tokens streamed so far. `reason` labels
    the failover metric ("unavailable": the replica went away, "stalled": it stopped answering);
    None when the replica refused it before it started there (not counted as a failover)."""

    reason: str | None


@dataclass(frozen=True, slots=True)
class Moved:
    """The request migrated (live, with its KV) to the replica at `address`: the stream goes on
    there by attaching to it (attach_migrated), not by resubmitting it. Not a failover."""

    address: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The request ends with this error; no other replica is tried."""

    error: RequestError


AttemptOutcome = Done | Failover | Moved | Fail
