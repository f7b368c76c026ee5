"""The frontend's view of which scheduler replicas exist: a source that yields the current set of
addresses each time it is asked."""

from __future__ import annotations

import abc


class DiscoveryError(RuntimeError):
    """A discovery source could not be read (DNS failure, Redis down); the caller keeps the
    last set it had."""


class ReplicaDiscovery(abc.ABC):
    """A source of scheduler replica addresses (host:port)."""

    #: Short name for logs and metrics: "static", "dns" or "redis".
    kind: str = ""

    @abc.abstractmethod
    def resolve(self) -> frozenset[str]:
        """Returns the replica addresses as of now; raises DiscoveryError when the source cannot
        be read. Blocking: call it off the event loop."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Releases connections; the default holds none."""


class StaticDiscovery(ReplicaDiscovery):
    """A fixed list of addresses from the configuration."""

    kind = "static"

    def __init__(self, addresses: list[str] | tuple[str, ...]) -> None:
        cleaned = [address.strip() for address in addresses if address.strip()]
        if not cleaned:
            raise ValueError("discovery = static needs at least one address in scheduler_addresses")
        self._addresses = frozenset(cleaned)

    def resolve(self) -> frozenset[str]:
        return self._addresses
