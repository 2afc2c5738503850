"""GPTConfig from the `model` section of a nemo_llm config (any mapping with its keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemo_llm.models.gpt.model import GPTConfig, pad_vocab_size


def gpt_config_from(model_cfg: Mapping[str, Any], vocab_size: int) -> GPTConfig:
    """vocab_size: the tokenizer's; it is padded here as Megatron pads it (make_vocab_size_divisible_by
    x tensor_model_parallel_size)."""
    heads = model_cfg["num_attention_heads"]
    return GPTConfig(
        vocab_size=pad_vocab_size(vocab_size, model_cfg["make_vocab_size_divisible_by"],
                                  model_cfg["tensor_model_parallel_size"]),
        max_position_embeddings=model_cfg["max_position_embeddings"],
        num_layers=model_cfg["num_layers"],
        hidden_size=model_cfg["hidden_size"],
        ffn_hidden_size=model_cfg["ffn_hidden_size"],
        num_attention_heads=heads,
        num_query_groups=model_cfg["num_query_groups"] or heads,
        position_embedding_type=model_cfg["position_embedding_type"],
        rotary_base=model_cfg["rotary_base"],
        normalization=model_cfg["normalization"],
        layernorm_epsilon=model_cfg["layernorm_epsilon"],
        activation=model_cfg["activation"],
        bias=model_cfg["bias"],
        share_embeddings_and_output_weights=model_cfg["share_embeddings_and_output_weights"],
        hidden_dropout=model_cfg["hidden_dropout"],
        attention_dropout=model_cfg["attention_dropout"],
        init_method_std=model_cfg["init_method_std"],
    )
