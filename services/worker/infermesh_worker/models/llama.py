"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) as one stage of a TP/PP group.

Differences between the architectures are configuration: Q/K/V bias (Qwen2, attention_bias),
per-head Q/K RMSNorm (Qwen3), explicit head_dim, sliding window (Mistral), rope scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infermesh_worker.attention_metadata import AttentionMetadata
from infermesh_worker.checkpoint_reader import CheckpointReader
from infermesh_worker.layers.attention import PagedAttention
from infermesh_worker.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from infermesh_worker.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from infermesh_worker.layers.norm import RMSNorm
from infermesh_worker.layers.rotary import RotaryEmbedding
from infermesh_worker.model_config import ModelConfig
from infermesh_worker.parallel import ParallelContext
from infermesh_worker.sharding import ShardPlan


class DecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        shard: ShardPlan,
        parallel: ParallelContext,
        rotary: RotaryEmbedding,
        dtype,
        device,
    ) -> None:
        super().__init__()
        d = config.head_dim
        self.num_heads = shard.num_heads
        self.num_kv_heads = shard.num_kv_heads
        self.head_dim = d
        self.q_size = shard.num_heads * d
        self.kv_size = shard.num_kv_heads * d
        self.rotary = rotary
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.qkv_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [
                ("q_proj", self.q_size, shard.head_start * d, config.num_heads * d),
                ("k_proj", self.kv_size, shard.kv_head_start * d, config.num_kv_heads * d),
                ("v_proj", self.kv_size, shard.kv_head_start * d, config.num_kv_heads * d),
            ],
            config.qkv_bias,
            dtype,
            device,
        )
        self.o_proj = RowParallelLinear(
            self.q_size,
            config.num_heads * d,
            config.hidden_size,
            shard.head_start * d,
            config.o_bias,
            parallel,
            dtype,
            device,
        )
        self.q_norm = RMSNorm(d, config.rms_norm_eps, dtype, device) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps, dtype, device) if config.qk_norm else None
        self.attn = PagedAttention(shard.num_heads, shard.num_kv_heads, d)
        inter = shard.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [
                ("gate_proj", inter, shard.intermediate_start, config.intermediate_size),
                ("up_proj", inter, shard.intermediate_start, config.intermediate_size),
            ],
            config.mlp_bias,
            dtype,
            device,
        )
        self.down_proj = RowParallelLinear(
            inter,
            config.intermediate_size,
            config.hidden_size,
            shard.intermediate_start,
            config.mlp_bias,
            parallel,
            dtype,
            device,
        )

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, kv_layer: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        tokens = x.shape[0]
        h = self.input_layernorm(x)
        q, k, v = self.qkv_proj(h).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(tokens, self.num_heads, self.head_dim)
        k = k.reshape(tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        x = x + self.o_proj(self.attn(q, k, v, kv_layer, meta))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)

    def load(self, reader: CheckpointReader, prefix: str) -> None:
        self.input_layernorm.load(reader, f"{prefix}.input_layernorm.weight")
        self.post_attention_layernorm.load(reader, f"{prefix}.post_attention_layernorm.weight")
        self.qkv_proj.load(reader, f"{prefix}.self_attn")
        self.o_proj.load(reader, f"{prefix}.self_attn.o_proj")
        if self.q_norm is not None:
            self.q_norm.load(reader, f"{prefix}.self_attn.q_norm.weight")
            self.k_norm.load(reader, f"{prefix}.self_attn.k_norm.weight")
        self.gate_up_proj.load(reader, f"{prefix}.mlp")
        self.down_proj.load(reader, f"{prefix}.mlp.down_proj")


class LlamaFamilyModel(nn.Module):
    """One pipeline stage: embedding on the first stage, layers [layer_start, layer_end), final norm and
    LM head on the last stage. Hidden states travel between stages with send/recv."""

    def __init__(
        self,
        config: ModelConfig,
        shard: ShardPlan,
        parallel: ParallelContext,
        max_positions: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.config = config
        self.shard = shard
        self.parallel = parallel
        self.dtype = dtype
        self.device = device
        self.rotary = RotaryEmbedding(config.rope, config.head_dim, max_positions, device)
        self.embed_tokens = (
            VocabParallelEmbedding(config.vocab_size, config.hidden_size, parallel, dtype, device)
            if parallel.is_first_stage
            else None
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, shard, parallel, self.rotary, dtype, device)
            for _ in range(shard.layer_start, shard.layer_end)
        )
        if parallel.is_last_stage:
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, parallel, dtype, device)
        else:
            self.norm = None
            self.lm_head = None

    @property
    def num_local_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor | None:
        """Normed final hidden states [T, hidden] on the last stage; None on the others (sent onward)."""
        if self.parallel.is_first_stage:
            x = self.embed_tokens(input_ids)
        else:
            x = self.parallel.recv_from_previous_stage(
                (input_ids.shape[0], self.config.hidden_size), self.dtype, self.device
            )
        for index, layer in enumerate(self.layers):
            x = layer(positions, x, kv_cache[index], meta)
        if not self.parallel.is_last_stage:
            self.parallel.send_to_next_stage(x)
            return None
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits (gathered over the tensor group) for the given hidden rows."""
        return self.lm_head(hidden)

    def load(self, reader: CheckpointReader) -> None:
        if self.embed_tokens is not None:
            self.embed_tokens.load(reader, "model.embed_tokens.weight")
        for offset, layer in enumerate(self.layers):
            layer.load(reader, f"model.layers.{self.shard.layer_start + offset}")
        if self.lm_head is not None:
            self.norm.load(reader, "model.norm.weight")
            tied = self.config.tie_word_embeddings or not reader.has("lm_head.weight")
            self.lm_head.load(reader, "model.embed_tokens.weight" if tied else "lm_head.weight")
