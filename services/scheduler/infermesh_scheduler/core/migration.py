"""Live migration in the core: a running request leaves this replica with its KV, or arrives with it.

Source side, in protocol order (the service copies blocks between the calls):
  start_out     the request is pinned: it keeps decoding but is never preempted, so the blocks
                already copied stay its own and unchanged
  complete_blocks   its full computed blocks (immutable from now on): copy those not copied yet,
                and ask again for the ones completed meanwhile
  hold          it is no longer scheduled; once `is_quiet` (no plan in flight carries it) every
                token but the last sampled one has KV
  final_blocks  the blocks holding all its computed tokens (the last one partial): the stop-and-copy
  hand_over     it leaves this replica without a final output; its blocks are freed and the
                workers told to forget it. Returns what the destination adopts.
  cancel_out    any failure before hand_over: it runs on here as if nothing happened.

Destination side: `reserve_in` blocks for the KV before it arrives (held by no sequence),
`extend_in` as the source's sequence grows, then `adopt_in` (it runs as if it had computed its
tokens here; the next plan sends it to the workers with num_computed_tokens set, so nothing is
recomputed) or `release_in` when the migration failed.

One completion per request (n = 1) and running requests only: siblings of n > 1 and swapped
requests are refused with a reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infermesh_scheduler.core.errors import InvalidRequestError
from infermesh_scheduler.core.load import RequestLoad
from infermesh_scheduler.core.request import RequestSpec
from infermesh_scheduler.core.sequence import SeqStatus, Sequence

if TYPE_CHECKING:
    from infermesh_scheduler.core.scheduler import Scheduler


class MigrationRefused(Exception):
    """This request cannot migrate now; the message says why (it keeps running where it is)."""


@dataclass(slots=True)
class MigratedRequest:
    """A request handed over: its spec (outputs so far as resumed tokens, the remaining timeout)
    and how many of its tokens have KV in the copied blocks."""

    spec: RequestSpec
    num_computed_tokens: int


def request_loads(sched: Scheduler) -> list[RequestLoad]:
    """Every live request with what choosing migrations needs, in admission order."""
    loads = []
    for req in sched._requests.values():
        live = [s for s in req.sequences if s.status is not SeqStatus.FINISHED]
        loads.append(
            RequestLoad(
                request_id=req.spec.request_id,
                arrival=req.arrival_seq,
                num_tokens=sum(s.num_tokens for s in live),
                num_blocks=sum(len(s.block_ids) for s in live),
                running=bool(live) and all(s.status is SeqStatus.RUNNING for s in live),
            )
        )
    return sorted(loads, key=lambda r: r.arrival)


def _sequence(sched: Scheduler, request_id: str) -> Sequence:
    req = sched._requests.get(request_id)
    if req is None:
        raise MigrationRefused(f"request {request_id!r} is not live on this replica")
    if req.spec.sampling.n != 1:
        raise MigrationRefused(f"request {request_id!r} has n = {req.spec.sampling.n}: only n = 1 migrates")
    return req.sequences[0]


def start_out(sched: Scheduler, request_id: str) -> None:
    seq = _sequence(sched, request_id)
    if seq.migrating:
        raise MigrationRefused(f"request {request_id!r} is already migrating")
    if seq.status is not SeqStatus.RUNNING or not seq.sent:
        raise MigrationRefused(
            f"request {request_id!r} is {seq.status.value}, not running on the workers: only running "
            "requests migrate (waiting ones have no KV to move)"
        )
    seq.migrating = True


def _migrating(sched: Scheduler, request_id: str) -> Sequence:
    seq = _sequence(sched, request_id)
    if not seq.migrating or seq.status is not SeqStatus.RUNNING:
        raise MigrationRefused(f"request {request_id!r} is not migrating out (ended or cancelled)")
    return seq


def complete_blocks(sched: Scheduler, request_id: str) -> list[int]:
    seq = _migrating(sched, request_id)
    return list(seq.block_ids[: seq.num_computed_tokens // sched.kv.block_size])


def hold(sched: Scheduler, request_id: str) -> None:
    _migrating(sched, request_id).held = True


def is_quiet(sched: Scheduler, request_id: str) -> bool:
    seq = _migrating(sched, request_id)
    return seq.held and not seq.in_flight


def final_blocks(sched: Scheduler, request_id: str) -> tuple[list[int], int]:
    """(blocks holding every computed token, computed token count); the request must be quiet."""
    seq = _migrating(sched, request_id)
    if not (seq.held and not seq.in_flight):
        raise MigrationRefused(f"request {request_id!r} is still in a step: hold it and wait until quiet")
    return sched.kv.export_block_ids(seq), seq.num_computed_tokens


def snapshot(sched: Scheduler, request_id: str) -> MigratedRequest:
    """What the destination adopts, without letting go here (the request must be quiet)."""
    _, computed = final_blocks(sched, request_id)
    seq = _sequence(sched, request_id)
    req = seq.request
    spec = req.spec
    remaining = None
    if spec.timeout_s is not None:
        remaining = max(0.0, req.deadline_mono - sched._clock())
    migrated = MigratedRequest(
        spec=dataclasses.replace(
            spec,
            prompt_token_ids=list(spec.prompt_token_ids),
            resumed_output_token_ids=seq.token_ids[seq.num_prompt_tokens :],
            timeout_s=remaining,
        ),
        num_computed_tokens=computed,
    )
    return migrated


def hand_over(sched: Scheduler, request_id: str) -> MigratedRequest:
    migrated = snapshot(sched, request_id)
    seq = _sequence(sched, request_id)
    req = seq.request
    seq.migrating = seq.held = False
    sched._release(seq)
    sched._table.end(req, None, [])
    return migrated


def cancel_out(sched: Scheduler, request_id: str) -> None:
    req = sched._requests.get(request_id)
    if req is not None and req.sequences:
        seq = req.sequences[0]
        seq.migrating = seq.held = False


def reserve_in(sched: Scheduler, num_tokens: int) -> list[int]:
    kv = sched.kv
    need = kv.blocks_for(num_tokens)
    if need > kv.num_free - sched.config.preemption_threshold:
        raise MigrationRefused(
            f"no room for {need} KV blocks here ({kv.num_free} free, "
            f"{sched.config.preemption_threshold} kept in reserve)"
        )
    return kv.reserve(num_tokens)


def extend_in(sched: Scheduler, blocks: list[int], num_tokens: int) -> list[int]:
    """`blocks` grown to hold num_tokens (the new ones appended)."""
    kv = sched.kv
    missing = kv.blocks_for(num_tokens) - len(blocks)
    if missing <= 0:
        return blocks
    return blocks + reserve_in(sched, missing * kv.block_size)


def adopt_in(sched: Scheduler, migrated: MigratedRequest, blocks: list[int]) -> None:
    spec = migrated.spec
    kv = sched.kv
    total = len(spec.prompt_token_ids) + len(spec.resumed_output_token_ids)
    if migrated.num_computed_tokens >= total:
        raise MigrationRefused("a migrated request needs its last sampled token still to compute")
    needed = kv.blocks_for(total)
    if len(blocks) < kv.blocks_for(migrated.num_computed_tokens):
        raise MigrationRefused(
            f"{len(blocks)} blocks cannot hold {migrated.num_computed_tokens} computed tokens"
        )
    try:
        sched._table.check_new(spec)  # the same rules as a Submit here (this replica's limits)
    except InvalidRequestError as invalid:
        raise MigrationRefused(str(invalid)) from None
    seq = sched._table.admit(spec)
    extra = blocks[needed:]
    if extra:
        kv.release_reserved(extra)
    kv.adopt(seq, blocks[:needed], migrated.num_computed_tokens)
    seq.status = SeqStatus.RUNNING
    sched._table.mark_started(seq.request, 0, seq.num_prompt_tokens)
    sched._insert_running(seq)


def release_in(sched: Scheduler, blocks: list[int]) -> None:
    if blocks:
        sched.kv.release_reserved(blocks)
