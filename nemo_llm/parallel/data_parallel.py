"""Data parallelism over the mesh's dp dimension.

- Distributed optimizer (model.use_distributed_optimizer=true): FSDP2 fully_shard per transformer
  layer and per stage, so optimizer states, gradients and (between uses) parameters are sharded
  over dp. Parameters stay gathered from forward to backward (no re-gather in backward), which is
  the memory/communication point of Megatron's distributed optimizer plus sharded gradients.
- Otherwise plain data parallelism: parameters replicated, gradients averaged with one bucketed
  all-reduce per step after the backward passes of all microbatches.

Mixed precision with FSDP keeps fp32 master parameters and reduces gradients in fp32 while
computing in bf16 (MixedPrecisionPolicy).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def apply_fsdp(part: nn.Module, dp_mesh: DeviceMesh, param_dtype: torch.dtype | None) -> nn.Module:
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in part.decoder.layers.values():
        fully_shard(layer, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)
    fully_shard(part, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)
    return part


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def all_reduce_gradients(parameters: Iterable[nn.Parameter], group: dist.ProcessGroup) -> None:
    """Average gradients over the data-parallel group, one flat buffer per dtype."""
    if dist.get_world_size(group) == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in parameters:
        if param.grad is not None:
            grad = local(param.grad)
            by_dtype.setdefault(grad.dtype, []).append(grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
