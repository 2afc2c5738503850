"""float8 matmuls for the transformer layers' linear layers (model.fp8), applied to a built model.

- torchao: every nn.Linear inside the decoder layers becomes torchao's Float8Linear (dynamic
  tensorwise scaling, e4m3 forward, e5m2 gradients); parameters and state_dict keys are unchanged,
  so checkpoints do not depend on the choice. The embedding and the output layer stay in bf16, as in
  Megatron and torchao's recipes (their fp8 error hurts the loss most).
- transformer_engine: the same linear layers become te.pytorch.Linear with the weights copied, and
  the engine runs forward under te.pytorch.fp8_autocast (delayed scaling, HYBRID format).

Both packages are optional: asking for one that is not installed stops with how to install it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from nemo_llm.errors import NemoLLMError


class Float8Unavailable(NemoLLMError, RuntimeError):
    """model.fp8 names a package that is not installed or cannot run here."""


# fp8 tensor-core matmuls need both dimensions to be multiples of 16.
def _fp8_friendly(linear: nn.Linear) -> bool:
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def _decoder_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for layer in model.decoder.layers.values():
        for parent in layer.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear and _fp8_friendly(child):
                    found.append((parent, name, child))
    return found


def apply_fp8(model: nn.Module, recipe: str | None) -> nn.Module:
    """Convert the decoder's linear layers in place for `recipe` (None: leave the model as it is)."""
    if recipe is None:
        return model
    if recipe == "torchao":
        try:
            from torchao.float8 import Float8LinearConfig
            from torchao.float8.float8_linear import Float8Linear
        except ImportError as e:
            raise Float8Unavailable(f"model.fp8=torchao needs the torchao package ({e}): pip install torchao, "
                                    "or set model.fp8=null") from None
        config = Float8LinearConfig()
        for parent, name, linear in _decoder_linears(model):
            setattr(parent, name, Float8Linear.from_float(linear, config=config))
        return model
    if recipe == "transformer_engine":
        te = _transformer_engine()
        for parent, name, linear in _decoder_linears(model):
            replacement = te.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    params_dtype=linear.weight.dtype, device=linear.weight.device)
            with torch.no_grad():
                replacement.weight.copy_(linear.weight)
                if linear.bias is not None:
                    replacement.bias.copy_(linear.bias)
            setattr(parent, name, replacement)
        return model
    raise ValueError(f"unknown fp8 recipe {recipe!r}")


def fp8_context(recipe: str | None):
    """What forward runs under: Transformer Engine's fp8_autocast for its layers; nothing otherwise
    (torchao's layers cast on their own)."""
    if recipe != "transformer_engine":
        return nullcontext()
    te = _transformer_engine()
    from transformer_engine.common.recipe import DelayedScaling, Format

    return te.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling(fp8_format=Format.HYBRID))


def _transformer_engine():
    try:
        import transformer_engine.pytorch as te
    except ImportError as e:
        raise Float8Unavailable(
            f"model.fp8=transformer_engine needs NVIDIA Transformer Engine ({e}); it comes with NGC PyTorch "
            "containers (docker/Dockerfile) or pip install transformer-engine[pytorch]; or use model.fp8=torchao"
        ) from None
    return te
