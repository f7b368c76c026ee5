"""The one place the request rules live: what a request may ask of this model and scheduler.

Pure (no gRPC, no scheduler state): the scheduler's servicer calls check_request before a request
waits for the worker group or for queue room, and the core's admission calls it again (with the
sized pool) so the core never holds an unchecked request; tests and the simulator drive the core
directly. The ranges of the sampler's values are infermesh_shared.sampling_rules, which the worker
checks too; the frontend checks only what needs text or the shape of its own API. Only a rule
that needs the live request table (a duplicate request id) is checked elsewhere
(RequestTable.check_new). Every refusal names its SubmitRequest field (InvalidRequestError.field),
which the servicer sends as data beside the message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from infermesh_shared.sampling_rules import sampling_violation

from infermesh_scheduler.core.config import SchedulerCoreConfig
from infermesh_scheduler.core.errors import InvalidRequestError
from infermesh_scheduler.core.kv_manager import request_worst_blocks
from infermesh_scheduler.core.request import RequestSpec, SamplingOptions


@dataclass(slots=True, frozen=True)
class RequestLimits:
    """What the served model and this scheduler accept."""

    # Token ids must be below this; 0 = unknown (the check is skipped).
    vocab_size: int
    # Longest prompt + output of one request (tokens).
    max_model_len: int
    # n > 1 shares the prompt's KV blocks copy-on-write: only allowed when enabled.
    enable_cow: bool
    # The KV pool: 0 blocks = not sized yet (the workers report it), so the fit is judged at
    # admission. preemption_threshold blocks are kept back when nothing can be preempted.
    block_size: int = 0
    num_blocks: int = 0
    enable_preemption: bool = True
    preemption_threshold: int = 0

    @classmethod
    def of(cls, cfg: SchedulerCoreConfig) -> RequestLimits:
        """The limits of a running core (its pool is sized)."""
        return cls(
            cfg.vocab_size,
            cfg.max_model_len,
            cfg.enable_cow,
            cfg.block_size,
            cfg.num_blocks,
            cfg.enable_preemption,
            cfg.preemption_threshold,
        )


def check_request(spec: RequestSpec, limits: RequestLimits) -> None:
    """Raises InvalidRequestError naming the first rule `spec` breaks, how to fix it, and the
    SubmitRequest field it is about."""
    if not spec.request_id:
        raise InvalidRequestError(
            "request_id is empty: give each request a unique id (it is used by Abort)", "request_id"
        )
    prompt = spec.prompt_token_ids
    if not prompt:
        raise InvalidRequestError(
            "prompt_token_ids is empty: a request needs at least one prompt token", "prompt_token_ids"
        )
    s = spec.sampling
    _check_sampling(s)
    for ids, what, field in (
        (prompt, "prompt", "prompt_token_ids"),
        (spec.resumed_output_token_ids, "resumed output", "resumed_output_token_ids"),
        (s.stop_token_ids, "stop", "sampling.stop_token_ids"),
        ([token for token, _ in s.logit_bias], "logit_bias", "sampling.logit_bias"),
    ):
        _check_token_ids(ids, what, field, limits.vocab_size)
    total = len(prompt) + s.max_tokens
    if total > limits.max_model_len:
        raise InvalidRequestError(
            f"prompt ({len(prompt)} tokens) + max_tokens ({s.max_tokens}) = {total} tokens exceeds the "
            f"model's max_model_len of {limits.max_model_len} tokens; shorten the prompt or lower max_tokens",
            "sampling.max_tokens",
        )
    resumed = len(spec.resumed_output_token_ids)
    if resumed and resumed >= s.max_tokens:
        raise InvalidRequestError(
            f"resumed_output_token_ids has {resumed} tokens, which already reach max_tokens "
            f"({s.max_tokens}): nothing is left to generate",
            "resumed_output_token_ids",
        )
    if resumed and s.n > 1:
        raise InvalidRequestError(
            "resumed_output_token_ids needs n == 1: a resumed request has one completion",
            "resumed_output_token_ids",
        )
    if s.n > 1 and not limits.enable_cow:
        raise InvalidRequestError(
            f"n={s.n} needs completions to share the prompt's KV blocks copy-on-write; "
            "start the scheduler with enable_cow=true or send n=1",
            "sampling.n",
        )
    if limits.num_blocks:
        _check_fits_the_pool(len(prompt), s, limits)


def _check_sampling(s: SamplingOptions) -> None:
    if s.max_tokens < 1:
        raise InvalidRequestError(f"max_tokens must be >= 1, got {s.max_tokens}", "sampling.max_tokens")
    if s.n < 1:
        raise InvalidRequestError(f"n (number of completions) must be >= 1, got {s.n}", "sampling.n")
    violation = sampling_violation(s)
    if violation is not None:
        field, message = violation
        raise InvalidRequestError(message, f"sampling.{field}")
    if s.min_tokens > s.max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({s.min_tokens}) must be <= max_tokens ({s.max_tokens})", "sampling.min_tokens"
        )


def _check_token_ids(ids: Sequence[int], what: str, field: str, vocab_size: int) -> None:
    if not ids or (min(ids) >= 0 and not (vocab_size and max(ids) >= vocab_size)):
        return  # the common case, at C speed
    for position, token in enumerate(ids):
        if token < 0 or (vocab_size and token >= vocab_size):
            raise InvalidRequestError(
                f"{what} token id {token} at position {position} is outside the vocabulary: "
                f"the model's vocab_size is {vocab_size}, so ids must be in [0, {vocab_size})",
                field,
            )


def _check_fits_the_pool(prompt_len: int, s: SamplingOptions, limits: RequestLimits) -> None:
    bs = limits.block_size
    if limits.enable_preemption:
        # A preempted child recomputes without sharing, so count every completion in full;
        # the top-ranked request may use the preemption_threshold reserve.
        need, room = s.n * -(-(prompt_len + s.max_tokens) // bs), limits.num_blocks
    else:
        # Nothing can be evicted: the whole request must fit beside the reserve.
        need = request_worst_blocks(prompt_len, s.max_tokens, s.n, bs)
        room = limits.num_blocks - limits.preemption_threshold
    if need > room:
        raise InvalidRequestError(
            f"prompt + max_tokens (x n={s.n}) need up to {need} KV blocks of {bs} tokens but only "
            f"{room} can ever be given to one request; lower max_tokens or n",
            "sampling.max_tokens",
        )
