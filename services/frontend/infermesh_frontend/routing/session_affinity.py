"""session: requests with the same session id stick to one replica while it lives."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infermesh_frontend.routing.least_load import LeastLoadPolicy
from infermesh_frontend.routing.rendezvous import rendezvous_pick
from infermesh_frontend.routing.replica_load import ReplicaLoad
from infermesh_frontend.routing.route_request import RouteRequest, RoutingPolicy

DEFAULT_SESSION_TTL_S = 1800.0
DEFAULT_MAX_SESSIONS = 100_000


@dataclass(slots=True)
class _SessionEntry:
    address: str
    last_used: float


class SessionAffinityPolicy:
    """A new session goes to its rendezvous-hash replica, so every frontend (they share nothing)
    picks the same one; the choice is remembered until the session is idle for `ttl_s` or its
    replica leaves, when it is rehashed over the replicas still up. Requests without a session
    id go to `fallback` (least load).
    """

    name = "session"

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_SESSION_TTL_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        fallback: RoutingPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_sessions < 1:
            raise ValueError("ttl_s must be positive and max_sessions >= 1")
        self._ttl_s = ttl_s
        self._max_sessions = max_sessions
        self._fallback = fallback or LeastLoadPolicy()
        self._clock = clock
        # Least recently used first, so expiry and the size cap both evict from the front.
        self._sessions: OrderedDict[str, _SessionEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def pick(self, request: RouteRequest, candidates: Sequence[ReplicaLoad]) -> ReplicaLoad | None:
        if not candidates:
            return None
        if not request.session_id:
            return self._fallback.pick(request, candidates)
        now = self._clock()
        self._evict(now)
        entry = self._sessions.get(request.session_id)
        if entry is not None:
            for replica in candidates:
                if replica.address == entry.address:
                    entry.last_used = now
                    self._sessions.move_to_end(request.session_id)
                    return replica
        chosen = rendezvous_pick(request.session_id, candidates)
        assert chosen is not None  # candidates is non-empty
        self._sessions[request.session_id] = _SessionEntry(chosen.address, now)
        self._sessions.move_to_end(request.session_id)
        self._evict(now)
        return chosen

    def _evict(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if len(self._sessions) > self._max_sessions or now - oldest.last_used > self._ttl_s:
                self._sessions.popitem(last=False)
            else:
                break
