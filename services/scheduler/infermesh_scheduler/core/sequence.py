"""One completion's state inside the scheduler, and the request that owns 1..n of them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from infermesh_scheduler.core.block_hash import BlockKey, block_hash, block_key, salt_root
from infermesh_scheduler.core.request import RequestSpec


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # no device blocks; (re)computes from num_computed_tokens = 0
    RUNNING = "running"  # holds device blocks
    SWAPPED = "swapped"  # KV lives in CPU blocks
    FINISHED = "finished"


@dataclass(slots=True)
class RequestState:
    spec: RequestSpec
    # Admission order; ties every policy's ordering (FCFS).
    arrival_seq: int
    priority: int
    class_rank: int
    # Monotonic-clock deadline (given, or synthesised for edf/lrs).
    deadline_mono: float
    sequences: list[Sequence] = field(default_factory=list)
    num_finished: int = 0
    forked: bool = False
    started: bool = False
    cached_prompt_tokens: int = 0
    # Read on every sampled token, so worked out once at admission: the token ids that stop a
    # completion (EOS unless ignored, plus stop_token_ids), the token count at which it stops for
    # length (prompt + max_tokens, capped by max_model_len), whether it returns logprobs.
    stop_ids: frozenset[int] = frozenset()
    max_total_tokens: int = 0
    wants_logprobs: bool = False


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request: RequestState
    index: int
    token_ids: list[int]
    num_prompt_tokens: int
    # (class, -priority, arrival): smaller ranks higher; the largest is preempted first.
    rank: tuple[int, int, int]
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    cpu_block_ids: list[int] = field(default_factory=list)
    # Whether the worker currently holds this sequence (else the next plan sends it in full).
    sent: bool = False
    # Blocks appended since the last plan that mentioned this sequence.
    new_block_ids: list[int] = field(default_factory=list)
    # Forked child: index of the shared block it must copy before its first write; -1 if none.
    cow_block_index: int = -1
    # Full blocks already offered to the prefix cache.
    num_cached_blocks: int = 0
    block_keys: list[BlockKey] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    preempted: bool = False
    num_scheduled_now: int = 0
    # In an outstanding plan: its next token is unknown until that plan's update(), so it is
    # neither scheduled again nor preempted until then.
    in_flight: bool = False
    # Migrating out (core/migration.py): never preempted; once held, not scheduled either.
    migrating: bool = False
    held: bool = False

    def reset_to_waiting(self) -> bool:
        """Forget all KV progress: the sequence recomputes from its first token (prompt plus the
        tokens it generated so far). Blocks must already be given back. Returns whether the worker
        held it (the caller tells the worker to forget it, when the worker still can)."""
        was_sent = self.sent
        self.status = SeqStatus.WAITING
        self.block_ids = []
        self.cpu_block_ids = []
        self.new_block_ids = []
        self.num_computed_tokens = 0
        self.num_cached_blocks = 0
        self.cow_block_index = -1
        self.sent = False
        self.preempted = True
        return was_sent

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def full_block_keys(self, block_size: int, num_blocks: int) -> list[BlockKey]:
        """Keys of the first num_blocks full blocks, computed once and remembered."""
        keys = self.block_keys
        hashes = self.block_hashes
        tokens = self.token_ids
        while len(keys) < num_blocks:
            i = len(keys)
            parent = hashes[-1] if hashes else salt_root(self.request.spec.cache_salt)
            key = block_key(parent, tuple(tokens[i * block_size : (i + 1) * block_size]))
            keys.append(key)
            hashes.append(block_hash(key))
        return keys
