"""A GPT decoder in plain PyTorch.

Reads top to bottom like nanoGPT's model.py, with the module names of Megatron-core so that a
Megatron user finds `decoder.layers.3.self_attention.linear_qkv` where they expect it. Options
(positions, norm, MLP, attention groups) are chosen when the model is built; `forward` has no
branches for them and no collectives: tensor, sequence and pipeline parallelism are applied from
outside (nemo_llm.parallel).

For generation, forward takes a KVCache: the keys and values of earlier tokens are kept, so each
new token costs one position's work instead of the whole sequence's.

Shapes: b = batch, s = sequence, h = hidden, a = attention heads, g = query groups, d = head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nemo_llm.models.gpt.cross_entropy import IGNORE_INDEX, linear_cross_entropy


@dataclass
class GPTConfig:
    vocab_size: int  # already padded (see pad_vocab_size)
    max_position_embeddings: int
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int  # == num_attention_heads for MHA, fewer for GQA, 1 for MQA
    position_embedding_type: str = "learned_absolute"  # learned_absolute | rope
    rotary_base: float = 10000.0
    normalization: str = "layernorm"  # layernorm | rmsnorm
    layernorm_epsilon: float = 1e-5
    activation: str = "gelu"  # gelu | swiglu
    bias: bool = True  # biases of the linear layers
    share_embeddings_and_output_weights: bool = True
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def pad_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int = 1) -> int:
    """Megatron pads the vocabulary so that every tensor-parallel shard has the same, aligned size."""
    multiple = divisible_by * tensor_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


class KVCache:
    """Keys and values of the tokens a model has seen, per layer, for incremental decoding.

    Buffers are allocated on a layer's first call from the shapes it produces, so one cache works
    on a tensor-parallel shard (fewer local heads) or a pipeline stage (fewer layers) unchanged.
    `length` counts the tokens cached; GPTModel.forward advances it after each call.
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.length = 0
        self._keys: dict[str, torch.Tensor] = {}
        self._values: dict[str, torch.Tensor] = {}

    def update(self, layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [b, g, n, d] at position `length`; returns the layer's keys and values so far
        [b, g, length + n, d]."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were asked for")
        if layer not in self._keys:
            shape = (k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self._keys[layer] = k.new_empty(shape)
            self._values[layer] = v.new_empty(shape)
        keys, values = self._keys[layer], self._values[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def for_layer(self, layer: str) -> LayerKVCache:
        return LayerKVCache(self, layer)


@dataclass
class LayerKVCache:
    """One layer's view of a KVCache: what its attention reads and appends to."""

    cache: KVCache
    layer: str

    @property
    def offset(self) -> int:
        """Position of the first new token."""
        return self.cache.length

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(self.layer, k, v)


def build_norm(config: GPTConfig) -> nn.Module:
    if config.normalization == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
    # As in Megatron, `bias` is about linear layers: LayerNorm keeps its bias either way.
    return nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al.), applied to queries and keys in the rotate-half form."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [max_positions, d]
        # Not persistent: derived from the config, so checkpoints stay free of them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: [b, s, heads, d] at positions offset .. offset + s - 1 -> same shape, rotated by position."""
        end = offset + x.shape[1]
        cos = self.cos[offset:end, None, :].to(x.dtype)
        sin = self.sin[offset:end, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class NoRotation(nn.Module):
    """Stands in for RotaryEmbedding when positions are learned embeddings added to the input."""

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x


def causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """[queries, keys] bool, True where attention is allowed: the queries are the last `queries` of
    `keys` positions (SDPA's is_causal aligns them to the first ones instead)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


class SelfAttention(nn.Module):
    """Causal self-attention with grouped queries.

    linear_qkv's output is laid out per query group as [g, (a/g queries, 1 key, 1 value), d], as in
    Megatron, so that a column shard of it holds whole groups and the forward below works unchanged
    on a tensor-parallel shard (the local group count is read from the tensor's shape).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.heads_per_group = config.num_attention_heads // config.num_query_groups
        qkv_size = (config.num_attention_heads + 2 * config.num_query_groups) * self.head_dim
        self.linear_qkv = nn.Linear(config.hidden_size, qkv_size, bias=config.bias)
        self.linear_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.rotary = (
            RotaryEmbedding(self.head_dim, config.max_position_embeddings, config.rotary_base)
            if config.position_embedding_type == "rope"
            else NoRotation()
        )

    def core_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [b, a, s, d], k and v [b, g, t, d] (t >= s: the last s keys are the queries' own positions)
        -> [b, a, s, d]. Query heads j*a/g .. (j+1)*a/g - 1 share key/value head j (enable_gqa), so
        keys and values are never copied per head. A method of its own so that selective recompute
        can target it."""
        dropout = self.attention_dropout if self.training else 0.0
        s, t = q.shape[2], k.shape[2]
        if s == t:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=True)
        # Decoding: new queries after cached keys. One query sees every key, so it needs no mask.
        mask = None if s == 1 else causal_mask(s, t, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=True)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        offset = cache.offset if cache is not None else 0
        qkv = self.linear_qkv(x).view(b, s, -1, self.heads_per_group + 2, self.head_dim)
        q, k, v = qkv.split([self.heads_per_group, 1, 1], dim=3)
        q = self.rotary(q.reshape(b, s, -1, self.head_dim), offset).transpose(1, 2)
        k = self.rotary(k.squeeze(3), offset).transpose(1, 2)
        v = v.squeeze(3).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v)
        y = self.core_attention(q, k, v)
        return self.linear_proj(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """h -> ffn -> h with GELU (GPT-2/3)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.ffn_hidden_size, bias=config.bias)
        self.linear_fc2 = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


class SwiGLUMLP(nn.Module):
    """h -> silu(gate) * up -> h (Llama/PaLM).

    Gate and up projections are separate layers, not one fused fc1, so a column shard of each
    holds matching halves of the ffn dimension.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.linear_fc1_gate = nn.Linear(config.hidden_size, config.ffn_hidden_size, bias=config.bias)
        self.linear_fc1_up = nn.Linear(config.hidden_size, config.ffn_hidden_size, bias=config.bias)
        self.linear_fc2 = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1_gate(x)) * self.linear_fc1_up(x))


class TransformerLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)), dropout on each residual branch."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.input_layernorm = build_norm(config)
        self.self_attention = SelfAttention(config)
        self.pre_mlp_layernorm = build_norm(config)
        self.mlp = SwiGLUMLP(config) if config.activation == "swiglu" else MLP(config)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        # cache by keyword: sequence parallelism's PrepareModuleInput maps positional inputs to layouts, and a
        # positional None there left a reference to the norm's weight that broke module.to() at teardown.
        x = x + self.hidden_dropout(self.self_attention(self.input_layernorm(x), cache=cache))
        return x + self.hidden_dropout(self.mlp(self.pre_mlp_layernorm(x)))


class Embedding(nn.Module):
    """Token embedding, plus learned absolute positions when the model has no rotary embedding."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "learned_absolute"
            else None
        )
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """input_ids [b, s] at positions offset .. offset + s - 1 -> [b, s, h]."""
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            positions = torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device)
            x = x + self.position_embeddings(positions)
        return self.embedding_dropout(x)


class TransformerBlock(nn.Module):
    """The decoder stack. `layers` is a ModuleDict keyed by global layer number so that pipeline
    stages keep the names (and checkpoint keys) of the full model after the others are removed."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.layers = nn.ModuleDict({str(i): TransformerLayer(config) for i in range(config.num_layers)})
        self.final_layernorm = build_norm(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for name, layer in self.layers.items():
            x = layer(x, cache.for_layer(name)) if cache is not None else layer(x)
        return self.final_layernorm(x)


class GPTModel(nn.Module):
    """input_ids [b, s] (int64) -> logits [b, s, vocab_size] (float).

    With a KVCache, input_ids are the tokens after the cache.length already seen, and the cache
    advances by s."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.decoder = TransformerBlock(config)
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.share_embeddings_and_output_weights:
            self.output_layer.weight = self.embedding.word_embeddings.weight
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, labels: torch.Tensor | None = None,
                loss_chunk_tokens: int = 4096) -> torch.Tensor:
        """With labels: the mean loss instead of logits, from the output layer and cross-entropy fused in
        chunks of loss_chunk_tokens tokens, so [b, s, vocab] logits never exist (cross_entropy.py)."""
        hidden = self.hidden_states(input_ids, cache)
        if labels is not None:
            return linear_cross_entropy(hidden, self.output_layer.weight, labels, loss_chunk_tokens)
        return self.output_layer(hidden)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """[b, s, h] after the final norm: what the output layer reads. Generation applies the output
        layer to the last position only, so a long prompt never makes [b, s, vocab] logits."""
        if cache is None:
            return self.decoder(self.embedding(input_ids))
        hidden = self.decoder(self.embedding(input_ids, cache.length), cache)
        cache.length += input_ids.shape[1]
        return hidden

    @torch.no_grad()
    def init_weights(self) -> None:
        """Megatron's init: N(0, std) weights, zero biases, unit norms; the two projections that write
        into the residual stream (linear_proj, linear_fc2) get std / sqrt(2 * num_layers)."""
        std = self.config.init_method_std
        output_std = std / math.sqrt(2.0 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_output = name.endswith(("linear_proj", "linear_fc2"))
                nn.init.normal_(module.weight, mean=0.0, std=output_std if is_output else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()


def gpt_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32 over the labels that are not IGNORE_INDEX.
    logits [b, s, V], labels [b, s]. Also takes vocab-sharded DTensor logits under loss_parallel()."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
