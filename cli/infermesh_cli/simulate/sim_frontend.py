"""One simulated frontend: the real ReplicaTable and routing policy, fed GetLoad reports on the
virtual clock; finishes reach it one network hop after the replica produced them."""

from __future__ import annotations

from collections import deque

from infermesh_frontend.routing.policy_factory import make_routing_policy
from infermesh_frontend.routing.replica_table import LoadReport, ReplicaTable
from infermesh_frontend.routing.route_request import RouteRequest


class SimFrontend:
    __slots__ = ("index", "table", "policy", "_finishes")

    def __init__(self, index: int, dispatch_policy: str, block_size: int, addresses: list[str]) -> None:
        self.index = index
        self.table = ReplicaTable()
        self.table.sync(addresses)
        self.policy = make_routing_policy(dispatch_policy, block_size=block_size)
        # (virtual time the frontend learns of it, replica address), in time order: the hop
        # delay is the same for every finish, and finishes are produced in time order.
        self._finishes: deque[tuple[float, str]] = deque()

    def finish_at(self, when: float, address: str) -> None:
        self._finishes.append((when, address))

    def catch_up(self, now: float) -> None:
        """Counts every finish that has reached this frontend by `now`."""
        finishes = self._finishes
        record = self.table.record_finish
        while finishes and finishes[0][0] <= now:
            record(finishes.popleft()[1])

    def apply_report(self, address: str, report: LoadReport) -> None:
        self.table.apply_report(address, report)

    def pick(self, prompt_token_ids: list[int]) -> str | None:
        """The replica address the policy chooses (counted as dispatched), None when none is up."""
        candidates = self.table.candidates()
        if not candidates:
            return None
        chosen = self.policy.pick(RouteRequest(prompt_token_ids, ""), candidates)
        if chosen is None:
            return None
        self.table.record_dispatch(chosen.address)
        return chosen.address
