"""Activation recompute with Megatron's semantics, applied to a built GPTModel.

- selective: only the attention core (softmax(QK^T)V with its dropout) is recomputed in backward;
  its inputs q, k, v are kept (Korthikanti et al. 2022).
- full, method uniform: the layers of the stage are cut into chunks of num_layers; only each
  chunk's input is kept, and the chunk runs again in backward.
- full, method block: the first num_layers layers of the stage keep only their inputs; the rest
  keep everything (spend spare memory on speed).

torch.utils.checkpoint (non-reentrant) restores the RNG state when it recomputes, so dropout
masks, and therefore gradients, are the same as without recompute.
"""

from __future__ import annotations

import types
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from nemo_llm.models.gpt.model import GPTModel, TransformerBlock


def _checkpointed(fn):
    return partial(checkpoint, fn, use_reentrant=False)


def _run_layers(layers, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _uniform_forward(block: TransformerBlock, x: torch.Tensor, chunk: int) -> torch.Tensor:
    layers = list(block.layers.values())
    for start in range(0, len(layers), chunk):
        x = checkpoint(_run_layers, layers[start:start + chunk], x, use_reentrant=False)
    return block.final_layernorm(x)


def apply_recompute(model: GPTModel, granularity: str | None, method: str | None = None,
                    num_layers: int | None = None) -> GPTModel:
    """Set the recompute policy on model in place (and return it). Parameters and state_dict keys are
    unchanged, so checkpoints do not depend on the policy."""
    if granularity is None:
        return model
    block = model.decoder
    if granularity == "selective":
        for layer in block.layers.values():
            attention = layer.self_attention
            attention.core_attention = _checkpointed(attention.core_attention)
    elif granularity == "full" and method == "uniform":
        block.forward = types.MethodType(partial(_uniform_forward, chunk=num_layers), block)
    elif granularity == "full" and method == "block":
        for layer in list(block.layers.values())[:num_layers]:
            layer.forward = _checkpointed(layer.forward)
    else:
        raise ValueError(f"unknown recompute policy granularity={granularity} method={method}")
    return model
