"""The one place that owns the device mesh (Megatron's parallel_state).

Ranks are laid out on a 3-D mesh with dims ("pp", "dp", "tp"), tp varying fastest, so that the
tensor-parallel peers, which talk on every layer, are neighbours (the same node on a GPU cluster),
and pipeline stages, which talk least, are furthest apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIMS = ("pp", "dp", "tp")


@dataclass
class ParallelState:
    mesh: DeviceMesh
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    data_parallel_size: int
    virtual_pipeline_model_parallel_size: int | None = None
    # The first and last pipeline stage of this rank's pipeline, which both hold the word
    # embeddings when input and output embeddings are tied (None without pipelining).
    embedding_group: dist.ProcessGroup | None = None

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.mesh["tp"]

    @property
    def dp_mesh(self) -> DeviceMesh:
        return self.mesh["dp"]

    @property
    def pp_mesh(self) -> DeviceMesh:
        return self.mesh["pp"]

    @property
    def tp_rank(self) -> int:
        return self.tp_mesh.get_local_rank()

    @property
    def dp_rank(self) -> int:
        return self.dp_mesh.get_local_rank()

    @property
    def pp_rank(self) -> int:
        return self.pp_mesh.get_local_rank()

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pipeline_model_parallel_size - 1


_STATE: ParallelState | None = None


def initialize_model_parallel(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                              virtual_pipeline_model_parallel_size: int | None = None,
                              device_type: str = "cpu") -> ParallelState:
    """Build the mesh over the initialised default process group; dp = world / (tp x pp)."""
    global _STATE
    world = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if world % model_parallel:
        raise ValueError(f"world size {world} is not a multiple of tensor x pipeline parallel size {model_parallel}")
    dp = world // model_parallel
    mesh = init_device_mesh(device_type, (pipeline_model_parallel_size, dp, tensor_model_parallel_size),
                            mesh_dim_names=MESH_DIMS)
    _STATE = ParallelState(mesh, tensor_model_parallel_size, pipeline_model_parallel_size, dp,
                           virtual_pipeline_model_parallel_size, _embedding_group(mesh))
    return _STATE


def _embedding_group(mesh: DeviceMesh) -> dist.ProcessGroup | None:
    """Every rank must take part in creating every group; each keeps the one it belongs to."""
    ranks = mesh.mesh  # [pp, dp, tp] tensor of global ranks
    if ranks.shape[0] == 1:
        return None
    mine = None
    for dp in range(ranks.shape[1]):
        for tp in range(ranks.shape[2]):
            members = [int(ranks[0, dp, tp]), int(ranks[-1, dp, tp])]
            group = dist.new_group(members)
            if dist.get_rank() in members:
                mine = group
    return mine


def get_parallel_state() -> ParallelState:
    if _STATE is None:
        raise RuntimeError("model parallel state is not initialised: call initialize_model_parallel() first")
    return _STATE


def destroy_model_parallel() -> None:
    global _STATE
    _STATE = None
