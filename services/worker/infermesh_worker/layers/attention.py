"""Attention over the paged KV cache: write this step's K/V into their slots, then attend.

With the C++ kernel (meta.paged) every token of the step is attended in one call that reads K/V in
place through the block tables; otherwise keys are gathered through each block table and attended
with torch SDPA (one padded call for the decodes, one per prefill chunk)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from infermesh_worker.attention_metadata import AttentionMetadata


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.gqa = num_heads != num_kv_heads

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KV, D]
        v: torch.Tensor,  # [T, KV, D]
        kv_layer: torch.Tensor,  # [2, num_blocks, block_size, KV, D]
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        k_cache = kv_layer[0].view(-1, self.num_kv_heads, self.head_dim)
        v_cache = kv_layer[1].view(-1, self.num_kv_heads, self.head_dim)
        k_cache.index_copy_(0, meta.slot_mapping, k)
        v_cache.index_copy_(0, meta.slot_mapping, v)
        paged = meta.paged
        if paged is not None:
            with record_function("infermesh::paged_attention"):  # named in profiles; the op is not aten
                out = paged.kernel(
                    q.contiguous(),
                    kv_layer[0],
                    kv_layer[1],
                    paged.block_tables,
                    paged.seq_of_token,
                    paged.context_lens,
                    paged.window,
                    self.scale,
                )
            return out.reshape(out.shape[0], self.num_heads * self.head_dim)

        out = torch.empty_like(q)
        decode = meta.decode
        if decode is not None:
            qd = q if decode.covers_all_tokens else q[decode.token_index]
            keys = k_cache[decode.key_slots].transpose(1, 2)  # [B, KV, L, D]
            values = v_cache[decode.key_slots].transpose(1, 2)
            od = F.scaled_dot_product_attention(
                qd.unsqueeze(2), keys, values, attn_mask=decode.mask, scale=self.scale, enable_gqa=self.gqa
            ).squeeze(2)
            if decode.covers_all_tokens:
                out = od
            else:
                out[decode.token_index] = od
        for span in meta.prefills:
            qp = q[span.token_start : span.token_end].transpose(0, 1)  # [H, S, D]
            keys = k_cache[span.key_slots].transpose(0, 1)  # [KV, L, D]
            values = v_cache[span.key_slots].transpose(0, 1)
            op = F.scaled_dot_product_attention(
                qp, keys, values, attn_mask=span.mask, scale=self.scale, enable_gqa=self.gqa
            )
            out[span.token_start : span.token_end] = op.transpose(0, 1)
        return out.reshape(out.shape[0], self.num_heads * self.head_dim)
