"""What a step's sampled tokens do: advance computed tokens, append the token, offer full blocks
to the prefix cache, fork n > 1 completions, finish sequences that stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infermesh_scheduler.core.request import FinishReason, RequestOutput
from infermesh_scheduler.core.sequence import SeqStatus, Sequence
from infermesh_scheduler.core.step_plan import SampledToken

if TYPE_CHECKING:
    from infermesh_scheduler.core.scheduler import Scheduler


def apply_step_results(
    sched: Scheduler, scheduled: list[Sequence], sampled: list[SampledToken]
) -> list[RequestOutput]:
    """The outputs of one applied step, in the order of its sequences."""
    announce = sched.config.max_inflight_plans > 1
    by_seq = {t.seq_id: t for t in sampled}
    outputs: list[RequestOutput] = []
    kv = sched.kv
    cache = kv.prefix_cache_enabled
    bs = kv.block_size
    running = SeqStatus.RUNNING
    stop, length = FinishReason.STOP, FinishReason.LENGTH
    for seq in scheduled:
        if seq.status is not running:
            continue  # aborted or expired while the step ran
        computed = seq.num_computed_tokens + seq.num_scheduled_now
        seq.num_computed_tokens = computed
        tokens = seq.token_ids
        if cache and computed // bs > seq.num_cached_blocks:
            kv.cache_full_blocks(seq)
        if computed < len(tokens):
            continue  # a prefill chunk short of the end: nothing sampled yet
        token = by_seq.get(seq.seq_id)
        if token is None:
            raise RuntimeError(
                f"the worker returned no token for sequence {seq.seq_id}, which reached the end of its tokens"
            )
        tid = token.token_id
        tokens.append(tid)
        req = seq.request
        if tid in req.stop_ids:
            reason: FinishReason | None = stop
        elif len(tokens) >= req.max_total_tokens:
            reason = length
        else:
            reason = None
        out = RequestOutput(
            req.spec.request_id, seq.index, [tid], [token.logprob] if req.wants_logprobs else (), reason
        )
        if token.top is not None and req.spec.sampling.top_logprobs:
            out.new_top_logprobs = [token.top]
        outputs.append(out)
        if not req.forked and req.spec.sampling.n > 1:
            sched._fork(seq)
        if reason is None:
            if announce:
                sched._announce.append(token)
        else:
            sched._release(seq)
            if req.num_finished == req.spec.sampling.n:
                sched._table.finish(req, out)
    return outputs
