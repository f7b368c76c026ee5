"""A minimal stand-in for the scheduler's side of the step-plan contract, for driving a worker in tests.

It allocates blocks, sends a sequence in full the first time it is scheduled and as a delta after,
records sampled tokens, and forgets finished sequences, exactly as the proto describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infermesh.v1 import common_pb2, worker_pb2
from infermesh_worker.plan_codec import decode_plan
from infermesh_worker.step_plan import StepPlan


@dataclass(slots=True)
class PlannedSequence:
    seq_id: int
    token_ids: list[int]
    sampling: common_pb2.SamplingParams
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_output: int = 0
    sent: bool = False
    shared_blocks: int = 0  # leading blocks borrowed from another sequence (not freed by us)
    outputs: list[int] = field(default_factory=list)


class StepPlanner:
    def __init__(self, block_size: int, num_blocks: int) -> None:
        self.block_size = block_size
        self.free_blocks = list(range(num_blocks))
        self.sequences: dict[int, PlannedSequence] = {}
        self.step_id = 0
        self._finished: list[int] = []
        self.swap_out: list[tuple[int, int]] = []
        self.swap_in: list[tuple[int, int]] = []
        self.copy: list[tuple[int, int]] = []

    def add(
        self,
        seq_id: int,
        token_ids: list[int],
        sampling: common_pb2.SamplingParams | None = None,
        *,
        prefix_blocks: list[int] | None = None,
        num_computed: int = 0,
        num_output: int = 0,
    ) -> PlannedSequence:
        """A sequence to send; `prefix_blocks` (with num_computed) models a prefix-cache hit."""
        seq = PlannedSequence(
            seq_id=seq_id,
            token_ids=list(token_ids),
            sampling=sampling or common_pb2.SamplingParams(temperature=0.0, top_p=1.0, max_tokens=64),
            block_ids=list(prefix_blocks or []),
            num_computed=num_computed,
            num_output=num_output,
            shared_blocks=len(prefix_blocks or []),
        )
        self.sequences[seq_id] = seq
        return seq

    def plan(self, schedule: dict[int, int]) -> worker_pb2.StepPlan:
        """A StepPlan computing schedule[seq_id] tokens of each listed sequence."""
        self.step_id += 1
        plan = worker_pb2.StepPlan(step_id=self.step_id, finished_seq_ids=self._finished)
        self._finished = []
        for src, dst in self.swap_out:
            plan.swap_out.add(src=src, dst=dst)
        for src, dst in self.swap_in:
            plan.swap_in.add(src=src, dst=dst)
        for src, dst in self.copy:
            plan.copy.add(src=src, dst=dst)
        self.swap_out, self.swap_in, self.copy = [], [], []
        for seq_id, count in schedule.items():
            seq = self.sequences[seq_id]
            needed = -(-(seq.num_computed + count) // self.block_size)
            new_blocks = [self.free_blocks.pop(0) for _ in range(needed - len(seq.block_ids))]
            seq.block_ids.extend(new_blocks)
            if not seq.sent:
                plan.new_sequences.add(
                    seq_id=seq_id,
                    token_ids=seq.token_ids,
                    sampling=seq.sampling,
                    block_ids=seq.block_ids,
                    num_computed_tokens=seq.num_computed,
                    num_scheduled_tokens=count,
                    num_output_tokens=seq.num_output,
                )
                seq.sent = True
            else:
                plan.running_sequences.add(
                    seq_id=seq_id,
                    new_block_ids=new_blocks,
                    num_computed_tokens=seq.num_computed,
                    num_scheduled_tokens=count,
                )
            seq.num_computed += count
        return plan

    def records(self, schedule: dict[int, int]) -> StepPlan:
        """plan(), decoded as the servicer does: what ModelRunner.execute takes."""
        return decode_plan(self.plan(schedule))

    def record(self, tokens) -> None:
        """Appends sampled tokens (SampledToken protos or dataclasses) to their sequences."""
        for token in tokens:
            seq = self.sequences[token.seq_id]
            seq.token_ids.append(token.token_id)
            seq.outputs.append(token.token_id)
            seq.num_output += 1

    def finish(self, seq_id: int) -> PlannedSequence:
        """Forgets a sequence (next plan tells the worker) and frees its own blocks."""
        seq = self.sequences.pop(seq_id)
        self.free_blocks.extend(seq.block_ids[seq.shared_blocks :])
        self._finished.append(seq_id)
        return seq

    def decode_all(self) -> dict[int, int]:
        """One token for every sequence whose known tokens are all computed but the last."""
        return {s.seq_id: 1 for s in self.sequences.values() if s.num_computed == len(s.token_ids) - 1}
