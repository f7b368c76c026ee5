"""Keeps a ReplicaTable current: membership from discovery, load and health from GetLoad polls.

Nothing here runs on a request's path: routing reads the table the loops below keep up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from infermesh_shared.discovery import DiscoveryError, ReplicaDiscovery

from infermesh_frontend.routing.replica_table import LoadReport, ReplicaHealth, ReplicaTable

logger = logging.getLogger(__name__)

# fetch_load(address, timeout_s) -> LoadReport; raises on any failure (unreachable, timeout).
FetchLoad = Callable[[str, float], Awaitable[LoadReport]]
# Called with (added, removed) addresses after discovery changed the table.
OnMembership = Callable[[list[str], list[str]], None]
# Called with an address whose poll just failed (the replica went DOWN).
OnDown = Callable[[str], None]


class ReplicaMonitor:
    """Runs one discovery loop and one load-poll loop per known replica.

    A replica is polled every `poll_interval_s`; a poll that fails or takes longer than
    `health_timeout_s` marks it DOWN at once (routing skips it), and the next poll that answers
    brings it back. Discovery is re-read every `discovery_interval_s`; when it fails the last
    known set is kept.
    """

    def __init__(
        self,
        discovery: ReplicaDiscovery,
        table: ReplicaTable,
        fetch_load: FetchLoad,
        *,
        poll_interval_s: float,
        health_timeout_s: float,
        discovery_interval_s: float,
        on_membership: OnMembership | None = None,
        on_down: OnDown | None = None,
    ) -> None:
        self.discovery = discovery
        self.table = table
        self._fetch_load = fetch_load
        self._poll_interval_s = poll_interval_s
        self._health_timeout_s = health_timeout_s
        self._discovery_interval_s = discovery_interval_s
        self._on_membership = on_membership
        self._on_down = on_down
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._discovery_task: asyncio.Task[None] | None = None
        self._wakeups: dict[str, asyncio.Event] = {}
        # Loops also check this: Python < 3.12's wait_for can swallow a cancellation that races
        # with its inner future finishing, and a loop must still end then.
        self._stopped = False

    async def start(self) -> None:
        """Reads discovery and polls every replica once, then keeps doing so in the background."""
        await self.refresh_discovery()
        # Replicas put in the table before start (a static list) get their pollers too.
        for address in self.table.addresses():
            if address not in self._pollers:
                self._wakeups[address] = asyncio.Event()
                self._pollers[address] = asyncio.get_running_loop().create_task(self._poll_loop(address))
        await asyncio.gather(*(self.poll_once(address) for address in self.table.addresses()))
        self._discovery_task = asyncio.get_running_loop().create_task(self._discovery_loop())

    async def stop(self) -> None:
        """Cancels every loop and closes the discovery source."""
        self._stopped = True
        for wakeup in self._wakeups.values():
            wakeup.set()
        tasks = [task for task in [self._discovery_task, *self._pollers.values()] if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._health_timeout_s + 1.0)
        self._pollers.clear()
        await asyncio.to_thread(self.discovery.close)

    def poll_soon(self, address: str) -> None:
        """Asks the replica's poller to poll now (after a call to it failed, say)."""
        wakeup = self._wakeups.get(address)
        if wakeup is not None:
            wakeup.set()

    async def refresh_discovery(self) -> None:
        """Reads the discovery source once and applies the result to the table."""
        try:
            addresses = await asyncio.to_thread(self.discovery.resolve)
        except DiscoveryError as error:
            logger.warning(
                "scheduler discovery (%s) failed, keeping %s: %s",
                self.discovery.kind,
                self.table.addresses(),
                error,
            )
            return
        added, removed = self.table.sync(addresses)
        for address in removed:
            task = self._pollers.pop(address, None)
            self._wakeups.pop(address, None)
            if task is not None:
                task.cancel()
        for address in added:
            # A new replica is polled at once: it takes no requests before its first report.
            self._wakeups[address] = asyncio.Event()
            self._wakeups[address].set()
            self._pollers[address] = asyncio.get_running_loop().create_task(self._poll_loop(address))
        if (added or removed) and self._on_membership is not None:
            self._on_membership(added, removed)

    async def poll_once(self, address: str) -> bool:
        """Polls one replica's load; returns whether it answered."""
        try:
            report = await asyncio.wait_for(
                self._fetch_load(address, self._health_timeout_s), self._health_timeout_s
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to answer means "not usable now"
            was_down = self.table.health(address) is ReplicaHealth.DOWN
            self.table.mark_down(address, f"load poll failed: {type(error).__name__}: {error}")
            if not was_down and self._on_down is not None:
                self._on_down(address)
            return False
        self.table.apply_report(address, report)
        return True

    async def _poll_loop(self, address: str) -> None:
        wakeup = self._wakeups[address]
        while not self._stopped:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self._poll_interval_s)
            if self._stopped or self._pollers.get(address) is not asyncio.current_task():
                return  # stopped, or the replica left discovery
            wakeup.clear()
            await self.poll_once(address)

    async def _discovery_loop(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._discovery_interval_s)
            if not self._stopped:
                await self.refresh_discovery()
