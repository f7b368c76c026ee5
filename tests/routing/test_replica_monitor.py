"""ReplicaMonitor: discovery changes, load polls, DOWN on failure and back UP, over fakes."""

from __future__ import annotations

import asyncio

from infermesh_frontend.routing import LoadReport, ReplicaHealth, ReplicaTable
from infermesh_frontend.routing.replica_monitor import ReplicaMonitor
from infermesh_shared.discovery import DiscoveryError, ReplicaDiscovery


class ListDiscovery(ReplicaDiscovery):
    kind = "test"

    def __init__(self, addresses: set[str]) -> None:
        self.addresses = addresses
        self.broken = False
        self.closed = False

    def resolve(self) -> frozenset[str]:
        if self.broken:
            raise DiscoveryError("source down")
        return frozenset(self.addresses)

    def close(self) -> None:
        self.closed = True


def report(running: int) -> LoadReport:
    return LoadReport(running, 0, 0, 0, 8, 8, True, frozenset(), 0)


def test_monitor_tracks_membership_and_health() -> None:
    async def scenario() -> None:
        discovery = ListDiscovery({"a:1", "b:1"})
        dead: set[str] = set()
        polled: list[str] = []
        downs: list[str] = []
        changes: list[tuple[list[str], list[str]]] = []

        async def fetch(address: str, timeout_s: float) -> LoadReport:
            polled.append(address)
            if address in dead:
                raise ConnectionError("refused")
            return report(1)

        table = ReplicaTable()
        monitor = ReplicaMonitor(
            discovery,
            table,
            fetch,
            poll_interval_s=0.02,
            health_timeout_s=0.5,
            discovery_interval_s=0.02,
            on_membership=lambda added, removed: changes.append((added, removed)),
            on_down=downs.append,
        )
        await monitor.start()
        assert [r.address for r in table.candidates()] == ["a:1", "b:1"]
        assert changes == [(["a:1", "b:1"], [])]

        dead.add("a:1")
        await asyncio.sleep(0.1)
        assert table.health("a:1") is ReplicaHealth.DOWN and downs == ["a:1"]
        assert [r.address for r in table.candidates()] == ["b:1"]

        dead.clear()
        await asyncio.sleep(0.1)
        assert table.health("a:1") is ReplicaHealth.UP

        discovery.addresses = {"b:1", "c:1"}
        await asyncio.sleep(0.1)
        assert table.addresses() == ["b:1", "c:1"] and table.health("c:1") is ReplicaHealth.UP

        discovery.broken = True
        await asyncio.sleep(0.1)
        assert table.addresses() == ["b:1", "c:1"]

        count = len(polled)
        await monitor.stop()
        await asyncio.sleep(0.05)
        assert len(polled) == count and discovery.closed

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_replica_that_stops_answering_goes_down_within_the_health_timeout() -> None:
    async def scenario() -> None:
        hang = asyncio.Event()

        async def fetch(address: str, timeout_s: float) -> LoadReport:
            if hang.is_set():
                await asyncio.sleep(3600)
            return report(0)

        table = ReplicaTable()
        monitor = ReplicaMonitor(
            ListDiscovery({"a:1"}),
            table,
            fetch,
            poll_interval_s=0.02,
            health_timeout_s=0.1,
            discovery_interval_s=1,
        )
        await monitor.start()
        hang.set()
        await asyncio.sleep(0.3)
        assert table.health("a:1") is ReplicaHealth.DOWN
        await monitor.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
