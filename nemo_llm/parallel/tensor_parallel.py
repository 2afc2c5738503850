"""Megatron tensor and sequence parallelism through DTensor's parallelize_module.

ColwiseParallel is Megatron's column-parallel linear (its input side is the `f` operator:
identity forward, all-reduce backward); RowwiseParallel is the row-parallel linear (its output
side is the `g` operator: all-reduce forward, identity backward). With sequence parallelism
(Korthikanti et al. 2022) the activations between the tensor-parallel regions are sharded along
the sequence (Shard(1)): norms run on their shard (SequenceParallel), `g` becomes a
reduce-scatter and `f` an all-gather. The word embedding is split by vocabulary rows and the
output layer by vocabulary columns; its logits stay sharded (Shard(-1)) into a vocab-parallel
cross-entropy (loss_parallel), so the full logits are never gathered.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

from nemo_llm.models.gpt.model import GPTModel, SwiGLUMLP


def _layer_plan(mlp: nn.Module, sequence_parallel: bool) -> dict:
    between = Shard(1) if sequence_parallel else Replicate()
    plan = {
        "self_attention.linear_qkv": ColwiseParallel(),
        "self_attention.linear_proj": RowwiseParallel(output_layouts=between),
        "mlp.linear_fc2": RowwiseParallel(output_layouts=between),
    }
    fc1 = ("linear_fc1_gate", "linear_fc1_up") if isinstance(mlp, SwiGLUMLP) else ("linear_fc1",)
    plan.update({f"mlp.{name}": ColwiseParallel() for name in fc1})
    if sequence_parallel:
        plan.update({
            "input_layernorm": SequenceParallel(),
            "pre_mlp_layernorm": SequenceParallel(),
            # The all-gather (`f` with SP) before attention and MLP.
            "self_attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        })
    return plan


def apply_tensor_parallel(model: GPTModel, tp_mesh: DeviceMesh, sequence_parallel: bool) -> GPTModel:
    """Shard model in place over tp_mesh. Works on a pipeline stage too (modules it lacks are skipped).

    The model's output becomes a DTensor of logits sharded over the vocabulary: compute the loss
    inside torch.distributed.tensor.parallel.loss_parallel().
    """
    between = Shard(1) if sequence_parallel else Replicate()
    tied = model.config.share_embeddings_and_output_weights and isinstance(model.output_layer, nn.Linear) \
        and isinstance(model.embedding, nn.Module) and hasattr(model.embedding, "word_embeddings")
    top_plan = {}
    if hasattr(model.embedding, "word_embeddings"):
        top_plan["embedding.word_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        if sequence_parallel:  # positions are added and dropout applied before the scatter
            top_plan["embedding"] = PrepareModuleOutput(output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),))
    if isinstance(model.decoder.final_layernorm, (nn.LayerNorm, nn.RMSNorm)) and sequence_parallel:
        top_plan["decoder.final_layernorm"] = SequenceParallel()
    if isinstance(model.output_layer, nn.Linear):
        top_plan["output_layer"] = ColwiseParallel(input_layouts=between, output_layouts=Shard(-1),
                                                   use_local_output=False)
    parallelize_module(model, tp_mesh, top_plan)
    for layer in model.decoder.layers.values():
        parallelize_module(layer, tp_mesh, _layer_plan(layer.mlp, sequence_parallel))
    if tied:
        # Both sides are Shard(0) over the vocabulary: one DTensor can serve as both again.
        model.output_layer.weight = model.embedding.word_embeddings.weight
    return model
