"""Keeps an `infermesh up` cluster running: a service that dies is started again, with back-off.

Each restart prints one line. A service that dies `max_restarts` times within `window_s` is left
dead and the supervisor gives up (the caller exits non-zero). Services restart on the address they
announced before, so clients, the frontend and the workers keep dialling the same ports; the
recovery paths (worker re-registration and recompute, frontend failover) continue the requests.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field

from infermesh_cli.local_cluster import LocalCluster, ServiceProcess

# Back-off before the n-th restart in a row of one service: 0.5 s, 1 s, 2 s ... at most 10 s.
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0


@dataclass
class _History:
    deaths: deque = field(default_factory=deque)  # monotonic times of recent deaths
    restart_at: float | None = None  # when the pending restart is due


class Supervisor:
    """Call `check()` every fraction of a second; it returns an error message once it gives up."""

    def __init__(self, cluster: LocalCluster, max_restarts: int, window_s: float) -> None:
        self._cluster = cluster
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._history: dict[int, _History] = {}
        self.restarts = 0

    def _services(self) -> list[tuple[str, ServiceProcess]]:
        cluster = self._cluster
        named = [(f"scheduler-{i}", s) for i, s in enumerate(cluster.schedulers)]
        named += [(f"worker-{i}", w) for i, w in enumerate(cluster.workers)]
        named += [(f"frontend-{i}", f) for i, f in enumerate(cluster.frontends)]
        return named

    def check(self) -> str:
        """Restarts what is due; returns '' or why the cluster cannot be kept up."""
        now = time.monotonic()
        for label, service in self._services():
            if service.alive():
                continue
            history = self._history.setdefault(id(service), _History())
            if history.restart_at is None:
                history.deaths.append(now)
                while history.deaths and now - history.deaths[0] > self._window_s:
                    history.deaths.popleft()
                status = service.process.returncode if service.process is not None else None
                if len(history.deaths) > self._max_restarts:
                    return (
                        f"{label} died {len(history.deaths)} times within {self._window_s:.0f}s "
                        f"(max_restarts={self._max_restarts}); last exit status {status}: "
                        f"{service.first_error_line()}"
                    )
                backoff = min(_FIRST_BACKOFF_S * 2 ** (len(history.deaths) - 1), _MAX_BACKOFF_S)
                history.restart_at = now + backoff
                print(
                    f"{label} exited (status {status}); restarting in {backoff:.1f}s "
                    f"(restart {len(history.deaths)} of at most {self._max_restarts} "
                    f"in {self._window_s:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            elif now >= history.restart_at:
                history.restart_at = None
                service.restart()
                self.restarts += 1
        return ""
