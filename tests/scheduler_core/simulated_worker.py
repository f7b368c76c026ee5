"""A worker stand-in that keeps a fake KV cache and checks every plan against it.

Each KV slot stores the token id computed at that position. Before sampling, the worker reads
the sequence's whole history back through its block table and asserts it matches the tokens:
a wrong block table, a missed copy-on-write, a bad swap or a wrong prefix-cache hit all show up.
The sampled token is a hash of that history, so a wrong recompute changes later outputs.

With samples_itself=False it plays a rank that does not sample (an earlier pipeline stage): it
never appends the tokens it computes, only those the scheduler tells it in later plans'
sampled_tokens, so a token the scheduler forgets to tell shows up as "scheduled past its known tokens".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infermesh_scheduler.core import SampledToken, StepPlan

EOS = 0


@dataclass(slots=True)
class _WorkerSeq:
    token_ids: list[int]
    block_ids: list[int]
    num_computed: int
    ignore: bool = False


@dataclass
class SimulatedWorker:
    block_size: int
    num_blocks: int
    num_cpu_blocks: int = 0
    vocab_size: int = 50
    samples_itself: bool = True
    seqs: dict[int, _WorkerSeq] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = [[None] * self.block_size for _ in range(self.num_blocks)]
        self.cpu = [[None] * self.block_size for _ in range(self.num_cpu_blocks)]

    def next_token(self, history: list[int]) -> int:
        return hash(tuple(history)) % self.vocab_size

    def reset(self) -> None:
        self.seqs.clear()

    def execute(self, plan: StepPlan) -> list[SampledToken]:
        for sid in plan.finished_seq_ids:
            assert sid in self.seqs, f"plan forgets unknown sequence {sid}"
            del self.seqs[sid]
        for move in plan.swap_out:
            self.cpu[move.dst] = list(self.device[move.src])
        for move in plan.swap_in:
            self.device[move.dst] = list(self.cpu[move.src])
        for move in plan.copy:
            self.device[move.dst] = list(self.device[move.src])
        if not self.samples_itself:
            assert plan.tokens_in_later_plans, "a rank that does not sample needs the tokens in later plans"
        work: list[tuple[int, int]] = []
        for new in plan.new_sequences:
            assert new.seq_id not in self.seqs, f"NewSequence {new.seq_id} already held by the worker"
            assert 0 <= new.num_computed_tokens < len(new.token_ids)
            assert len(new.block_ids) * self.block_size >= new.num_computed_tokens + new.num_scheduled_tokens
            self.seqs[new.seq_id] = _WorkerSeq(
                list(new.token_ids), list(new.block_ids), new.num_computed_tokens
            )
            work.append((new.seq_id, new.num_scheduled_tokens))
        for told in plan.sampled_tokens:
            known = self.seqs.get(told.seq_id)
            # Idempotent by position: only a rank that lacks the token (computed == known) appends it.
            if known is not None and len(known.token_ids) == known.num_computed:
                known.token_ids.append(told.token_id)
        for run in plan.running_sequences:
            state = self.seqs[run.seq_id]
            assert state.num_computed == run.num_computed_tokens, (
                f"seq {run.seq_id}: worker computed {state.num_computed}, plan says {run.num_computed_tokens}"
            )
            state.block_ids.extend(run.new_block_ids)
            work.append((run.seq_id, run.num_scheduled_tokens))
        sampled: list[SampledToken] = []
        bs = self.block_size
        for sid, n in work:
            state = self.seqs[sid]
            assert n >= 1
            end = state.num_computed + n
            assert end <= len(state.token_ids), f"seq {sid}: scheduled past its known tokens"
            assert len(state.block_ids) * bs >= end, f"seq {sid}: block table too short"
            for pos in range(state.num_computed, end):
                self.device[state.block_ids[pos // bs]][pos % bs] = state.token_ids[pos]
            state.num_computed = end
            if end == len(state.token_ids):
                kv = [self.device[state.block_ids[p // bs]][p % bs] for p in range(end)]
                assert kv == state.token_ids, f"seq {sid}: KV read through the block table is wrong"
                token = self.next_token(state.token_ids)
                if self.samples_itself:
                    state.token_ids.append(token)
                sampled.append(SampledToken(sid, token, -0.5))
        return sampled
