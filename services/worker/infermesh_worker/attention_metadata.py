"""Per-step index tensors that tell every attention layer where each token's K/V lives.

Built once per step and shared by all layers, so the per-layer work is tensor ops only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class ScheduledChunk:
    """One sequence's share of a step: tokens [num_computed, num_computed + num_scheduled)."""

    block_table: list[int]
    num_computed: int
    num_scheduled: int


@dataclass(slots=True)
class PrefillSpan:
    """A sequence computing more than one token: attended on its own, with an explicit causal mask."""

    token_start: int  # first row of this sequence in the flattened batch
    token_end: int
    key_slots: torch.Tensor  # [L] cache slots of keys 0 .. L-1
    mask: torch.Tensor  # [num_scheduled, L] bool, True = may attend


@dataclass(slots=True)
class DecodeBatch:
    """All sequences computing exactly one token: one padded SDPA call per layer."""

    token_index: torch.Tensor  # [B] rows in the flattened batch
    key_slots: torch.Tensor  # [B, Lmax] cache slots; padding points at slot 0 and is masked
    mask: torch.Tensor  # [B, 1, 1, Lmax] bool
    covers_all_tokens: bool  # the batch is decode only: token_index is 0..B-1


@dataclass(slots=True)
class PagedBatch:
    """Every token of the step for the in-place kernel: keys are read through the block tables."""

    kernel: Callable  # kernels.paged_attention_ext's paged_attention
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0 (never read)
    seq_of_token: torch.Tensor  # [T] row of block_tables each token belongs to
    context_lens: torch.Tensor  # [T] keys a token sees: its position + 1
    window: int  # sliding window in tokens, 0 = none


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    decode: DecodeBatch | None
    prefills: list[PrefillSpan]
    paged: PagedBatch | None = None  # set: one kernel call per layer instead of decode + prefills


def _slots(block_table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    return block_table[positions // block_size] * block_size + positions % block_size


def _window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    allowed = key_pos <= query_pos
    if sliding_window is not None:
        allowed &= key_pos > query_pos - sliding_window
    return allowed


def build_attention_metadata(
    chunks: list[ScheduledChunk],
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
    kernel: Callable | None = None,
) -> AttentionMetadata:
    """Slot mapping plus, with `kernel`, the in-place kernel's inputs, else the decode/prefill
    grouping of the gather path, for `chunks` flattened in order."""
    if kernel is not None:
        return _paged_metadata(chunks, block_size, sliding_window, device, kernel)
    prefill_slots: list[tuple[int, torch.Tensor]] = []
    prefills: list[PrefillSpan] = []
    decode_rows: list[int] = []
    decode_tables: list[list[int]] = []
    decode_lengths: list[int] = []
    row = 0
    for chunk in chunks:
        total = chunk.num_computed + chunk.num_scheduled
        if chunk.num_scheduled == 1:
            decode_rows.append(row)
            decode_tables.append(chunk.block_table)
            decode_lengths.append(total)
        else:
            table = torch.tensor(chunk.block_table, dtype=torch.long)
            key_pos = torch.arange(total, dtype=torch.long)
            query_pos = key_pos[chunk.num_computed :]
            key_slots = _slots(table, key_pos, block_size)
            prefill_slots.append((row, key_slots[chunk.num_computed :]))
            prefills.append(
                PrefillSpan(
                    token_start=row,
                    token_end=row + chunk.num_scheduled,
                    key_slots=key_slots.to(device),
                    mask=_window_mask(query_pos[:, None], key_pos[None, :], sliding_window).to(device),
                )
            )
        row += chunk.num_scheduled

    decode = None
    if decode_rows:
        max_blocks = max(len(t) for t in decode_tables)
        tables = torch.tensor([t + [0] * (max_blocks - len(t)) for t in decode_tables], dtype=torch.long)
        lengths = torch.tensor(decode_lengths, dtype=torch.long)
        max_len = int(lengths.max())
        key_pos = torch.arange(max_len, dtype=torch.long)
        key_slots = tables[:, key_pos // block_size] * block_size + key_pos % block_size
        valid = key_pos[None, :] < lengths[:, None]
        mask = valid & _window_mask((lengths - 1)[:, None], key_pos[None, :], sliding_window)
        key_slots = torch.where(valid, key_slots, torch.zeros_like(key_slots))
        rows = torch.tensor(decode_rows, dtype=torch.long)
        decode = DecodeBatch(
            token_index=rows.to(device),
            key_slots=key_slots.to(device),
            mask=mask[:, None, None, :].to(device),
            covers_all_tokens=len(decode_rows) == row,
        )

    slot_mapping = torch.empty(row, dtype=torch.long)
    for start, slots in prefill_slots:
        slot_mapping[start : start + len(slots)] = slots
    if decode_rows:
        slot_mapping[rows] = key_slots[torch.arange(len(decode_rows)), lengths - 1]
    return AttentionMetadata(slot_mapping=slot_mapping.to(device), decode=decode, prefills=prefills)


def _paged_metadata(
    chunks: list[ScheduledChunk],
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
    kernel: Callable,
) -> AttentionMetadata:
    max_blocks = max(len(c.block_table) for c in chunks)
    tables = torch.tensor([c.block_table + [0] * (max_blocks - len(c.block_table)) for c in chunks])
    counts = torch.tensor([c.num_scheduled for c in chunks])
    seq_of_token = torch.repeat_interleave(torch.arange(len(chunks)), counts)
    # Position of each token: its sequence's first scheduled position plus its offset in the chunk.
    starts = torch.tensor([c.num_computed for c in chunks])
    first_row = torch.cumsum(counts, 0) - counts
    positions = torch.arange(int(counts.sum())) - first_row[seq_of_token] + starts[seq_of_token]
    slot_mapping = tables[seq_of_token, positions // block_size] * block_size + positions % block_size
    paged = PagedBatch(
        kernel=kernel,
        block_tables=tables.to(device),
        seq_of_token=seq_of_token.to(device),
        context_lens=(positions + 1).to(device),
        window=sliding_window or 0,
    )
    return AttentionMetadata(slot_mapping=slot_mapping.to(device), decode=None, prefills=[], paged=paged)
