"""Where the worker group is in its life, and the event each change of it emits."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class GroupState(Enum):
    """Where the worker group is in its life."""

    WAITING_FOR_WORKERS = "waiting_for_workers"  # never formed yet
    FORMING = "forming"
    READY = "ready"
    RECOVERING = "recovering"  # a member failed; waiting (group_recovery_timeout_ms) for it to be whole
    DOWN = "down"  # recovery timed out; requests are refused until the group is whole again
    MISCONFIGURED = "misconfigured"  # the workers cannot hold what the config asks for

    @property
    def refuses_requests(self) -> bool:
        """New requests are refused and live ones end (UNAVAILABLE) in this state."""
        return self in (GroupState.DOWN, GroupState.MISCONFIGURED)


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """The group went from `previous` to `state` because of `why`."""

    previous: GroupState
    state: GroupState
    why: str

    @property
    def lost_kv(self) -> bool:
        """The members' KV cache and sequence state can no longer be trusted: every live
        sequence must be sent again in full and recomputed."""
        return self.previous is GroupState.READY and self.state is not GroupState.READY
