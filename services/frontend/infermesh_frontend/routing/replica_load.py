"""What a frontend knows about one scheduler replica's load: its last GetLoad report plus the
requests this frontend sent and finished since then."""

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
    # Local account between two reports (Llumnix's "instance status local account"): requests
    # sent and finished by this frontend since the last report, so that a burst of requests
    # between two polls does not all go to the replica that looked idlest at the last poll.
    dispatched_since_report: int = 0
    finished_since_report: int = 0

    @property
    def num_requests(self) -> int:
        """Estimated requests on the replica now: reported ones plus this frontend's changes since."""
        reported = self.num_waiting + self.num_running + self.num_preempted
        return max(0, reported + self.dispatched_since_report - self.finished_since_report)

    @property
    def free_block_ratio(self) -> float:
        """Fraction of KV blocks free (1.0 before the first report says otherwise)."""
        return self.free_blocks / self.total_blocks if self.total_blocks else 1.0

    def load_key(self) -> tuple[int, int, float]:
        """Sort key: fewer requests first, then fewer queued prefill tokens, then more free KV."""
        return (self.num_requests, self.num_waiting_tokens, -self.free_block_ratio)
