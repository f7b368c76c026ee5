"""The rules a request must pass before the scheduler core queues it (pure: no scheduler state
except the caller's knowledge of which request ids are live)."""

from __future__ import annotations

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.errors import InvalidRequestError
from infermesh_scheduler.core.kv_manager import request_worst_blocks
from infermesh_scheduler.core.request import RequestSpec


def check_request(spec: RequestSpec, cfg: SchedulerCoreConfig) -> None:
    """Raise InvalidRequestError naming the first rule spec breaks (a message a person can act on)."""
    s = spec.sampling
    rid = spec.request_id
    prompt_len = len(spec.prompt_token_ids)
    if prompt_len == 0:
        raise InvalidRequestError(f"request {rid!r}: prompt_token_ids is empty")
    if s.max_tokens < 1:
        raise InvalidRequestError(f"request {rid!r}: max_tokens must be >= 1, got {s.max_tokens}")
    if s.n < 1:
        raise InvalidRequestError(f"request {rid!r}: n must be >= 1, got {s.n}")
    if s.n > 1 and not cfg.enable_cow:
        raise InvalidRequestError(
            f"request {rid!r}: n={s.n} needs completions to share the prompt's KV blocks "
            "copy-on-write; start the scheduler with enable_cow=true or send n=1"
        )
    if s.n > 1 and spec.resumed_output_token_ids:
        raise InvalidRequestError(f"request {rid!r}: resumed_output_token_ids cannot be combined with n > 1")
    if cfg.vocab_size:
        for tokens, what in (
            (spec.prompt_token_ids, "prompt"),
            (spec.resumed_output_token_ids, "resumed output"),
        ):
            bad = [t for t in tokens if t < 0 or t >= cfg.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"request {rid!r}: {what} token id {bad[0]} is outside the vocabulary "
                    f"[0, {cfg.vocab_size})"
                )
    if prompt_len + s.max_tokens > cfg.max_model_len:
        raise InvalidRequestError(
            f"request {rid!r}: prompt ({prompt_len} tokens) + max_tokens ({s.max_tokens}) = "
            f"{prompt_len + s.max_tokens} exceeds max_model_len {cfg.max_model_len}; "
            "shorten the prompt or lower max_tokens"
        )
    if len(spec.resumed_output_token_ids) >= s.max_tokens:
        raise InvalidRequestError(
            f"request {rid!r}: {len(spec.resumed_output_token_ids)} resumed output tokens already reach "
            f"max_tokens {s.max_tokens}"
        )
    bs = cfg.block_size
    if cfg.enable_preemption:
        # A preempted child recomputes without sharing, so count every completion in full;
        # the top-ranked request may use the preemption_threshold reserve.
        need, room = s.n * -(-(prompt_len + s.max_tokens) // bs), cfg.num_blocks
    else:
        # Nothing can be evicted: the whole request must fit beside the reserve.
        need = request_worst_blocks(prompt_len, s.max_tokens, s.n, bs)
        room = cfg.num_blocks - cfg.preemption_threshold
    if need > room:
        raise InvalidRequestError(
            f"request {rid!r}: prompt + max_tokens (x n={s.n}) need up to {need} KV blocks of "
            f"{bs} tokens but only {room} can ever be given to one request; lower max_tokens or n"
        )
