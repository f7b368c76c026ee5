"""What a frontend knows about one scheduler replica's load: its last GetLoad report plus the
requests this frontend has open on it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReplicaLoad:
    """Load snapshot of one replica as the routing policies see it."""

    address: str
    num_waiting: int = 0
    num_running: int = 0
    num_preempted: int = 0
    # Prompt tokens queued for prefill (tokens).
    num_waiting_tokens: int = 0
    free_blocks: int = 0
    total_blocks: int = 0
    # False while the replica's worker group is incomplete or its queue is over its health threshold.
    serving: bool = True
    # First-block hashes (infermesh_shared.prefix_hash) of prefixes the replica has cached.
    cached_prefix_hashes: frozenset[int] = field(default_factory=frozenset)
    prefix_cache_hits: int = 0
    # Requests this frontend has open on the replica now (exact: counted at dispatch and end),
    # and how many of them were open when the last report was taken. The report's count minus
    # the latter is the other frontends' load (known only as of the report); adding our exact
    # count keeps a burst between two polls from all going to the replica that looked idlest.
    own_in_flight: int = 0
    own_at_report: int = 0

    @property
    def num_requests(self) -> int:
        """Estimated requests on the replica now: other frontends' as last reported, plus ours."""
        reported = self.num_waiting + self.num_running + self.num_preempted
        return max(0, reported - self.own_at_report) + self.own_in_flight

    @property
    def free_block_ratio(self) -> float:
        """Fraction of KV blocks free (1.0 before the first report says otherwise)."""
        return self.free_blocks / self.total_blocks if self.total_blocks else 1.0

    def load_key(self) -> tuple[int, int, float]:
        """Sort key: fewer requests first, then fewer queued prefill tokens, then more free KV."""
        return (self.num_requests, self.num_waiting_tokens, -self.free_block_ratio)
