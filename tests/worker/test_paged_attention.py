"""Paged attention over scattered blocks equals dense causal attention on the same keys and values."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from infermesh_worker.attention_metadata import ScheduledChunk, build_attention_metadata
from infermesh_worker.layers.attention import PagedAttention

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8


def dense_attention(q, k, v, first_query_pos: int, window: int | None) -> torch.Tensor:
    """q [S, H, D] at positions first_query_pos.., k/v [L, KV, D] at positions 0..L-1."""
    query_pos = torch.arange(first_query_pos, first_query_pos + q.shape[0])[:, None]
    key_pos = torch.arange(k.shape[0])[None, :]
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos > query_pos - window
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    )
    return out.transpose(0, 1).reshape(q.shape[0], HEADS * HEAD_DIM)


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 8)), min_size=1, max_size=5),
    block_size=st.sampled_from([1, 2, 4, 16]),
    window=st.sampled_from([None, 3, 7]),
    seed=st.integers(0, 2**16),
)
def test_paged_attention_matches_dense(chunks, block_size, window, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-(c + s) // block_size) for c, s in chunks]
    num_blocks = sum(blocks_needed) + 3
    pool = list(range(num_blocks))
    rng.shuffle(pool)  # block tables point anywhere in the cache
    kv_layer = torch.randn(2, num_blocks, block_size, KV_HEADS, HEAD_DIM, generator=gen)  # stale garbage
    k_flat = kv_layer[0].view(-1, KV_HEADS, HEAD_DIM)
    v_flat = kv_layer[1].view(-1, KV_HEADS, HEAD_DIM)

    scheduled, full_kv, queries = [], [], []
    for (computed, count), needed in zip(chunks, blocks_needed, strict=True):
        table = [pool.pop() for _ in range(needed)]
        total = computed + count
        keys = torch.randn(total, KV_HEADS, HEAD_DIM, generator=gen)
        values = torch.randn(total, KV_HEADS, HEAD_DIM, generator=gen)
        # Earlier steps already wrote the computed prefix into the cache.
        for pos in range(computed):
            slot = table[pos // block_size] * block_size + pos % block_size
            k_flat[slot], v_flat[slot] = keys[pos], values[pos]
        scheduled.append(ScheduledChunk(table, computed, count))
        full_kv.append((keys, values))
        queries.append(torch.randn(count, HEADS, HEAD_DIM, generator=gen))

    meta = build_attention_metadata(scheduled, block_size, window, torch.device("cpu"))
    q = torch.cat(queries)
    k = torch.cat([keys[c.num_computed :] for c, (keys, _) in zip(scheduled, full_kv, strict=True)])
    v = torch.cat([values[c.num_computed :] for c, (_, values) in zip(scheduled, full_kv, strict=True)])
    out = PagedAttention(HEADS, KV_HEADS, HEAD_DIM)(q, k, v, kv_layer, meta)

    row = 0
    for chunk, (keys, values), query in zip(scheduled, full_kv, queries, strict=True):
        expected = dense_attention(query, keys, values, chunk.num_computed, window)
        torch.testing.assert_close(out[row : row + chunk.num_scheduled], expected, atol=1e-5, rtol=1e-5)
        row += chunk.num_scheduled
