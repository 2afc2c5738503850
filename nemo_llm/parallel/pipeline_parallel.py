"""Pipeline parallelism: cut the GPT into stages and drive them with torch.distributed.pipelining.

A stage is a copy of the model with the layers of other stages removed; the embedding lives on
the first stage, the final norm and output layer on the last, and nn.Identity stands in for what
a stage lacks, so GPTModel.forward runs unchanged on every stage. Layer names keep their global
numbers (decoder.layers.17 stays 17 on any stage), so checkpoints do not depend on the layout.

With a virtual pipeline of v chunks per rank (interleaved 1F1B, Narayanan et al. 2021), rank r
holds stages r, r + p, r + 2p, ...
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from nemo_llm.models.gpt.model import GPTModel

SCHEDULES = ("1f1b", "gpipe")


def stage_layer_counts(num_layers: int, num_stages: int, layer_split: Sequence[int] | None = None) -> list[int]:
    """Layers per pipeline stage: the explicit split when given, else equal shares."""
    if layer_split:
        if len(layer_split) != num_stages or sum(layer_split) != num_layers or min(layer_split) < 1:
            raise ValueError(f"pipeline layer split {list(layer_split)} must give each of the {num_stages} stages at "
                             f"least one layer and sum to {num_layers}")
        return list(layer_split)
    if num_layers % num_stages:
        raise ValueError(f"{num_layers} layers do not divide into {num_stages} pipeline stages")
    return [num_layers // num_stages] * num_stages


def stage_indices(pp_rank: int, pp_size: int, virtual_size: int) -> list[int]:
    """The pipeline stages rank pp_rank holds, in execution order."""
    return [pp_rank + chunk * pp_size for chunk in range(virtual_size)]


class StageInput(nn.Identity):
    """Stands in for the embedding on later stages: passes the previous stage's hidden states on and
    ignores the position offset the embedding would take."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


def build_stage(model: GPTModel, stage: int, layer_counts: Sequence[int]) -> GPTModel:
    """A copy of model holding only what pipeline stage `stage` computes."""
    part = copy.deepcopy(model)
    first_layer = sum(layer_counts[:stage])
    keep = {str(i) for i in range(first_layer, first_layer + layer_counts[stage])}
    for key in list(part.decoder.layers.keys()):
        if key not in keep:
            del part.decoder.layers[key]
    is_first, is_last = stage == 0, stage == len(layer_counts) - 1
    if not is_first:
        part.embedding = StageInput()
    if not is_last:
        part.decoder.final_layernorm = nn.Identity()
        part.output_layer = nn.Identity()
    elif not is_first and model.config.share_embeddings_and_output_weights:
        # Megatron's tied embeddings across stages: the last stage keeps its own copy of the word
        # embeddings, equal at init; their gradients are summed with the first stage's each step.
        # A frozen embedding (prompt learning) stays frozen in its copy.
        weight = part.output_layer.weight
        part.output_layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    return part


def build_schedule(parts: Sequence[nn.Module], stages: Sequence[int], num_stages: int, num_microbatches: int,
                   loss_fn: Callable, device: torch.device, group, schedule: str = "1f1b"):
    """The pipelining schedule over this rank's parts. Gradients are averaged over microbatches."""
    pipeline_stages = [PipelineStage(part, index, num_stages, device, group=group) for part, index in zip(parts, stages)]
    if len(pipeline_stages) > 1:
        return ScheduleInterleaved1F1B(pipeline_stages, num_microbatches, loss_fn=loss_fn)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    kind = Schedule1F1B if schedule == "1f1b" else ScheduleGPipe
    return kind(pipeline_stages[0], num_microbatches, loss_fn=loss_fn)
