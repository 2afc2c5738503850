"""The Hugging Face architectures nemo_llm converts to and from: GPT-2 and Llama.

Each architecture maps a config.json to a GPTConfig and back, and lists `Rule`s that move tensors
between the two state dicts. A rule works in both directions, so import and export cannot drift
apart. Config fields that would change the math of the model (a RoPE scaling, biases where ours
has none, another activation) are refused rather than dropped: a model that loads but computes
something else is worse than one that does not load.

Shapes: h = hidden, a = attention heads, g = query groups (key/value heads), d = head dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nemo_llm.errors import NemoLLMError
from nemo_llm.models.gpt import GPTConfig

Tensors = tuple[torch.Tensor, ...]


class ConversionError(NemoLLMError, ValueError):
    """A checkpoint, model or config that cannot be converted; the message names the field or tensor."""


def _same(*tensors: torch.Tensor) -> Tensors:
    return tensors


def _transposed(tensor: torch.Tensor) -> Tensors:
    # GPT-2's Conv1D stores [in, out]; nn.Linear stores [out, in].
    return (tensor.t(),)


@dataclass(frozen=True)
class Rule:
    """ours <-> hf: to_hf maps the tensors named by `ours` to those named by `hf`, from_hf back."""

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable[..., Tensors] = _same
    from_hf: Callable[..., Tensors] = _same


def split_qkv(qkv: torch.Tensor, config: GPTConfig) -> Tensors:
    """Our fused linear_qkv rows [g, (a/g queries, 1 key, 1 value), d] -> q [a*d], k [g*d], v [g*d] rows
    (the layout of separate q/k/v projections). Works on weights [rows, h] and biases [rows]."""
    groups, d = config.num_query_groups, config.head_dim
    per_group = config.num_attention_heads // groups
    grouped = qkv.reshape(groups, (per_group + 2) * d, *qkv.shape[1:])
    q, k, v = grouped.split([per_group * d, d, d], dim=1)
    return tuple(t.reshape(-1, *qkv.shape[1:]) for t in (q, k, v))


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """Inverse of split_qkv: heads of one query group and their key and value become adjacent rows."""
    groups, rest = config.num_query_groups, q.shape[1:]
    parts = [t.reshape(groups, -1, *rest) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def convert_state(rules: list[Rule], state: Mapping[str, torch.Tensor], to_hf: bool) -> dict[str, torch.Tensor]:
    """Apply every rule in one direction; keys of `state` that no rule names are left behind."""
    result: dict[str, torch.Tensor] = {}
    for rule in rules:
        sources, targets = (rule.ours, rule.hf) if to_hf else (rule.hf, rule.ours)
        outputs = (rule.to_hf if to_hf else rule.from_hf)(*(state[key] for key in sources))
        result.update(zip(targets, outputs))
    return result


def _refuse_unless(hf: Mapping[str, Any], key: str, default: Any, allowed: tuple, why: str) -> None:
    value = hf.get(key, default)
    if value not in allowed:
        shown = " or ".join(repr(a) for a in allowed)
        raise ConversionError(f"config.json: {key}={value!r} {why}, which nemo_llm's GPT model does not compute: "
                              f"only {key}={shown} converts")


class HFArchitecture(ABC):
    name: str  # the class transformers builds: config.json "architectures"
    model_type: str  # config.json "model_type"

    @abstractmethod
    def config_from_hf(self, hf: Mapping[str, Any]) -> GPTConfig:
        """Our config for a config.json; refuses fields that change the math."""

    @abstractmethod
    def config_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        """config.json for our config (vocab_size already the real, unpadded one)."""

    @abstractmethod
    def layer_rules(self, config: GPTConfig, i: int) -> list[Rule]: ...

    @abstractmethod
    def outer_rules(self, config: GPTConfig) -> list[Rule]:
        """Embeddings, final norm and (when untied) the output layer."""

    def rules(self, config: GPTConfig) -> list[Rule]:
        layers = [rule for i in range(config.num_layers) for rule in self.layer_rules(config, i)]
        return self.outer_rules(config) + layers

    def ignored(self, hf_key: str) -> bool:
        """Buffers some checkpoints carry that are derived, not learned (causal masks, RoPE frequencies)."""
        return False

    def canonical_key(self, hf_key: str) -> str:
        """The name transformers' *ForCausalLM gives the tensor (checkpoints of the bare model lack its prefix)."""
        return hf_key


class GPT2(HFArchitecture):
    """GPT2LMHeadModel: learned positions, LayerNorm, tanh-GELU MLP, biases, fused c_attn (Conv1D)."""

    name = "GPT2LMHeadModel"
    model_type = "gpt2"
    # GPT-2's gelu_new, gelu_pytorch_tanh and gelu_fast are all the tanh approximation our MLP uses.
    TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")

    def config_from_hf(self, hf: Mapping[str, Any]) -> GPTConfig:
        _refuse_unless(hf, "activation_function", "gelu_new", self.TANH_GELUS, "is another activation")
        _refuse_unless(hf, "scale_attn_weights", True, (True,), "leaves attention scores unscaled")
        _refuse_unless(hf, "scale_attn_by_inverse_layer_idx", False, (False,), "scales attention per layer")
        _refuse_unless(hf, "add_cross_attention", False, (False,), "adds cross-attention")
        hidden, heads = hf.get("n_embd", 768), hf.get("n_head", 12)
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            max_position_embeddings=hf.get("n_positions", 1024),
            num_layers=hf.get("n_layer", 12),
            hidden_size=hidden,
            ffn_hidden_size=hf.get("n_inner") or 4 * hidden,
            num_attention_heads=heads,
            num_query_groups=heads,
            position_embedding_type="learned_absolute",
            normalization="layernorm",
            layernorm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            activation="gelu",
            bias=True,
            share_embeddings_and_output_weights=hf.get("tie_word_embeddings", True),
            hidden_dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            init_method_std=hf.get("initializer_range", 0.02),
        )

    def config_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {
            "architectures": [self.name],
            "model_type": self.model_type,
            "vocab_size": config.vocab_size,
            "n_positions": config.max_position_embeddings,
            "n_ctx": config.max_position_embeddings,
            "n_embd": config.hidden_size,
            "n_layer": config.num_layers,
            "n_head": config.num_attention_heads,
            "n_inner": config.ffn_hidden_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.layernorm_epsilon,
            "resid_pdrop": config.hidden_dropout,
            "embd_pdrop": config.hidden_dropout,
            "attn_pdrop": config.attention_dropout,
            "initializer_range": config.init_method_std,
            "scale_attn_weights": True,
            "tie_word_embeddings": config.share_embeddings_and_output_weights,
        }

    def outer_rules(self, config: GPTConfig) -> list[Rule]:
        rules = [
            Rule(("embedding.word_embeddings.weight",), ("transformer.wte.weight",)),
            Rule(("embedding.position_embeddings.weight",), ("transformer.wpe.weight",)),
            Rule(("decoder.final_layernorm.weight",), ("transformer.ln_f.weight",)),
            Rule(("decoder.final_layernorm.bias",), ("transformer.ln_f.bias",)),
        ]
        if not config.share_embeddings_and_output_weights:
            rules.append(Rule(("output_layer.weight",), ("lm_head.weight",)))
        return rules

    def layer_rules(self, config: GPTConfig, i: int) -> list[Rule]:
        ours, hf = f"decoder.layers.{i}.", f"transformer.h.{i}."
        rules = [
            Rule((ours + "input_layernorm.weight",), (hf + "ln_1.weight",)),
            Rule((ours + "input_layernorm.bias",), (hf + "ln_1.bias",)),
            Rule((ours + "pre_mlp_layernorm.weight",), (hf + "ln_2.weight",)),
            Rule((ours + "pre_mlp_layernorm.bias",), (hf + "ln_2.bias",)),
            # c_attn is [h, q | k | v], all heads of q first; ours interleaves them per head.
            Rule((ours + "self_attention.linear_qkv.weight",), (hf + "attn.c_attn.weight",),
                 to_hf=lambda w: (torch.cat(split_qkv(w, config)).t(),),
                 from_hf=lambda w: (fuse_qkv(*w.t().chunk(3), config),)),
            Rule((ours + "self_attention.linear_proj.weight",), (hf + "attn.c_proj.weight",), _transposed, _transposed),
            Rule((ours + "mlp.linear_fc1.weight",), (hf + "mlp.c_fc.weight",), _transposed, _transposed),
            Rule((ours + "mlp.linear_fc2.weight",), (hf + "mlp.c_proj.weight",), _transposed, _transposed),
        ]
        qkv_bias = Rule((ours + "self_attention.linear_qkv.bias",), (hf + "attn.c_attn.bias",),
                        to_hf=lambda b: (torch.cat(split_qkv(b, config)),),
                        from_hf=lambda b: (fuse_qkv(*b.chunk(3), config),))
        biases = [(qkv_bias.ours[0], qkv_bias.hf[0], config.hidden_size * 3),
                  (ours + "self_attention.linear_proj.bias", hf + "attn.c_proj.bias", config.hidden_size),
                  (ours + "mlp.linear_fc1.bias", hf + "mlp.c_fc.bias", config.ffn_hidden_size),
                  (ours + "mlp.linear_fc2.bias", hf + "mlp.c_proj.bias", config.hidden_size)]
        if config.bias:
            rules += [qkv_bias] + [Rule((o,), (h,)) for o, h, _ in biases[1:]]
        else:
            # GPT-2 always has biases; a model without them is the same model with zero biases. Built
            # from the layer norm's weight so that they share its device and dtype (meta included).
            like = ours + "input_layernorm.weight"
            rules += [Rule((like,), (h,), to_hf=lambda w, n=n: (w.new_zeros(n),)) for _, h, n in biases]
        return rules

    def ignored(self, hf_key: str) -> bool:
        return hf_key.endswith((".attn.bias", ".attn.masked_bias"))

    def canonical_key(self, hf_key: str) -> str:
        # OpenAI's released checkpoints are GPT2Model's: wte.weight, not transformer.wte.weight.
        return hf_key if hf_key.startswith(("transformer.", "lm_head.")) else "transformer." + hf_key


class Llama(HFArchitecture):
    """LlamaForCausalLM: RoPE (rotate-half, as ours), RMSNorm, SwiGLU, no biases, grouped-query attention."""

    name = "LlamaForCausalLM"
    model_type = "llama"

    def config_from_hf(self, hf: Mapping[str, Any]) -> GPTConfig:
        _refuse_unless(hf, "hidden_act", "silu", ("silu",), "is another gated activation")
        _refuse_unless(hf, "attention_bias", False, (False,), "adds biases to the attention projections")
        _refuse_unless(hf, "mlp_bias", False, (False,), "adds biases to the MLP")
        scaling = hf.get("rope_scaling")
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) != "default":
            raise ConversionError(f"config.json: rope_scaling={scaling} rescales RoPE, which nemo_llm's GPT model "
                                  "does not compute: only rope_scaling=null converts")
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise ConversionError(f"config.json: rope_parameters.rope_type={rope['rope_type']!r} rescales RoPE, which "
                                  "nemo_llm's GPT model does not compute: only rope_type='default' converts")
        hidden, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        head_dim = hf.get("head_dim") or hidden // heads
        if head_dim * heads != hidden:
            raise ConversionError(f"config.json: head_dim={head_dim} x num_attention_heads={heads} is not hidden_size="
                                  f"{hidden}; nemo_llm's GPT model needs head_dim = hidden_size / num_attention_heads")
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 32000),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            num_layers=hf.get("num_hidden_layers", 32),
            hidden_size=hidden,
            ffn_hidden_size=hf.get("intermediate_size", 11008),
            num_attention_heads=heads,
            num_query_groups=hf.get("num_key_value_heads") or heads,
            position_embedding_type="rope",
            # transformers 5 moved rope_theta into rope_parameters; earlier versions keep it at the top.
            rotary_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            normalization="rmsnorm",
            layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
            activation="swiglu",
            bias=False,
            share_embeddings_and_output_weights=hf.get("tie_word_embeddings", False),
            hidden_dropout=0.0,
            attention_dropout=hf.get("attention_dropout", 0.0),
            init_method_std=hf.get("initializer_range", 0.02),
        )

    def config_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        return {
            "architectures": [self.name],
            "model_type": self.model_type,
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.ffn_hidden_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_query_groups,
            "head_dim": config.head_dim,
            "max_position_embeddings": config.max_position_embeddings,
            "rms_norm_eps": config.layernorm_epsilon,
            # Read by transformers 4 as is and by 5 as its rope_parameters.
            "rope_theta": config.rotary_base,
            "rope_scaling": None,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": config.attention_dropout,
            "initializer_range": config.init_method_std,
            "tie_word_embeddings": config.share_embeddings_and_output_weights,
        }

    def outer_rules(self, config: GPTConfig) -> list[Rule]:
        rules = [
            Rule(("embedding.word_embeddings.weight",), ("model.embed_tokens.weight",)),
            Rule(("decoder.final_layernorm.weight",), ("model.norm.weight",)),
        ]
        if not config.share_embeddings_and_output_weights:
            rules.append(Rule(("output_layer.weight",), ("lm_head.weight",)))
        return rules

    def layer_rules(self, config: GPTConfig, i: int) -> list[Rule]:
        ours, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn = hf + "self_attn."
        return [
            Rule((ours + "input_layernorm.weight",), (hf + "input_layernorm.weight",)),
            # HF's q/k/v rows are already in the rotate-half order our RoPE uses (its own conversion
            # script permuted Meta's interleaved pairs), so only the grouping changes.
            Rule((ours + "self_attention.linear_qkv.weight",),
                 (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
                 to_hf=lambda w: split_qkv(w, config),
                 from_hf=lambda q, k, v: (fuse_qkv(q, k, v, config),)),
            Rule((ours + "self_attention.linear_proj.weight",), (attn + "o_proj.weight",)),
            Rule((ours + "pre_mlp_layernorm.weight",), (hf + "post_attention_layernorm.weight",)),
            Rule((ours + "mlp.linear_fc1_gate.weight",), (hf + "mlp.gate_proj.weight",)),
            Rule((ours + "mlp.linear_fc1_up.weight",), (hf + "mlp.up_proj.weight",)),
            Rule((ours + "mlp.linear_fc2.weight",), (hf + "mlp.down_proj.weight",)),
        ]

    def ignored(self, hf_key: str) -> bool:
        return hf_key.endswith("rotary_emb.inv_freq")


ARCHITECTURES: dict[str, HFArchitecture] = {arch.name: arch for arch in (GPT2(), Llama())}


def architecture_of(hf: Mapping[str, Any]) -> HFArchitecture:
    """The architecture config.json names (its `architectures`, else its `model_type`)."""
    names = hf.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    by_type = {arch.model_type: arch for arch in ARCHITECTURES.values()}
    if not names and hf.get("model_type") in by_type:
        return by_type[hf["model_type"]]
    found = ", ".join(names) or f"model_type={hf.get('model_type')!r}"
    raise ConversionError(f"config.json: architecture {found} is not supported: nemo_llm converts "
                          f"{' and '.join(ARCHITECTURES)} checkpoints")


# What each Hugging Face layout needs of our config; export picks the one the model matches.
_LAYOUTS: dict[str, dict[str, Any]] = {
    GPT2.name: {"position_embedding_type": "learned_absolute", "normalization": "layernorm", "activation": "gelu"},
    Llama.name: {"position_embedding_type": "rope", "normalization": "rmsnorm", "activation": "swiglu", "bias": False},
}


def architecture_for(config: GPTConfig) -> HFArchitecture:
    """The Hugging Face architecture that computes what `config` computes; refuses the others, naming
    the features that have no equivalent in the nearest one."""
    differences = {name: [f"{key}={getattr(config, key)}" for key, value in needs.items()
                          if getattr(config, key) != value] for name, needs in _LAYOUTS.items()}
    nearest = min(differences, key=lambda name: len(differences[name]))
    if differences[nearest]:
        raise ConversionError(
            f"{', '.join(differences[nearest])} has no Hugging Face equivalent in the nearest layout, {nearest}: "
            "export needs learned_absolute + layernorm + gelu (GPT-2) or rope + rmsnorm + swiglu with bias=false "
            "(Llama)")
    if nearest == GPT2.name and config.num_query_groups != config.num_attention_heads:
        raise ConversionError(f"num_query_groups={config.num_query_groups} (grouped-query attention) has no "
                              "equivalent in GPT-2: only rope + rmsnorm + swiglu models (Llama) export with it")
    return ARCHITECTURES[nearest]
