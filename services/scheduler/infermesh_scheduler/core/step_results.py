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
    eos = sched._eos
    max_model_len = sched.config.max_model_len
    running = SeqStatus.RUNNING
    for seq in scheduled:
        if seq.status is not running:
            continue  # aborted or expired while the step ran
        seq.num_computed_tokens += seq.num_scheduled_now
        if seq.num_computed_tokens < len(seq.token_ids):
            if cache and seq.num_computed_tokens // bs > seq.num_cached_blocks:
                kv.cache_full_blocks(seq)
            continue
        token = by_seq.get(seq.seq_id)
        if token is None:
            raise RuntimeError(
                f"the worker returned no token for sequence {seq.seq_id}, which reached the end of its tokens"
            )
        tid = token.token_id
        seq.token_ids.append(tid)
        if cache and seq.num_computed_tokens // bs > seq.num_cached_blocks:
            kv.cache_full_blocks(seq)
        req = seq.request
        sampling = req.spec.sampling
        reason: FinishReason | None = None
        if (tid in eos and not sampling.ignore_eos) or tid in sampling.stop_token_ids:
            reason = FinishReason.STOP
        elif seq.num_output_tokens >= sampling.max_tokens or len(seq.token_ids) >= max_model_len:
            reason = FinishReason.LENGTH
        logprobs = [token.logprob] if sampling.logprobs > 0 else []
        out = RequestOutput(req.spec.request_id, seq.index, [tid], logprobs, reason)
        outputs.append(out)
        if sampling.n > 1 and not req.forked:
            sched._fork(seq)
        if announce and reason is None:
            sched._announce.append(token)
        if reason is not None:
            sched._release(seq)
            if req.num_finished == sampling.n:
                sched._table.finish(req, out)
    return outputs
