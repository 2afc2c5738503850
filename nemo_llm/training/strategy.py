"""MegatronStrategy: Lightning's process-group handling around nemo_llm's parallel engine.

Lightning starts (or joins) the process group; this strategy then builds the (pp, dp, tp) mesh,
and the LightningModule's configure_model() builds the GPTEngine on it. Nothing is wrapped in
DDP: the engine reduces gradients itself. Checkpoints keep the parameter names of the full model
(`model.decoder.layers.3....`) whatever the layout. One process writes a single .ckpt file; several
write a torch.distributed.checkpoint (DCP) directory of that name, each rank its own shards, and
rank 0 adds meta.pt (hyper-parameters, step, consumed samples).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from pytorch_lightning.strategies import DDPStrategy

from nemo_llm.parallel.state import ParallelState, destroy_model_parallel, initialize_model_parallel
from nemo_llm.training.checkpoint import DCP_META_FILE
_PART_PREFIX = re.compile(r"^engine\.parts\.\d+\.")


class MegatronStrategy(DDPStrategy):
    strategy_name = "megatron"

    def __init__(self, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                 virtual_pipeline_model_parallel_size: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.tensor_model_parallel_size = tensor_model_parallel_size
        self.pipeline_model_parallel_size = pipeline_model_parallel_size
        self.virtual_pipeline_model_parallel_size = virtual_pipeline_model_parallel_size
        self.parallel_state: ParallelState | None = None

    def setup_environment(self) -> None:
        super().setup_environment()
        self.parallel_state = initialize_model_parallel(
            self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
            self.virtual_pipeline_model_parallel_size, device_type=self.root_device.type)

    def configure_ddp(self) -> None:
        """The engine already does data parallelism (FSDP2 or its own gradient all-reduce)."""

    def teardown(self) -> None:
        destroy_model_parallel()
        super().teardown()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Keys of the full model, prefixed 'model.', whichever stage or chunk holds the tensor."""
        state = self.lightning_module.state_dict()
        return {_PART_PREFIX.sub("model.", key): value for key, value in state.items()}

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """Optimizer state keyed by parameter name, not by position: positions differ between ranks
        that hold different stages, names do not."""
        return get_optimizer_state_dict(self.lightning_module.engine, optimizer)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if self.world_size == 1:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(filepath)
        if self.is_global_zero and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.barrier("before_dcp_save")
        tensors = {"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint.get("optimizer_states", [])}
        dcp.save(tensors, checkpoint_id=str(path))
        if self.is_global_zero:
            meta = {k: v for k, v in checkpoint.items() if k in ("hyper_parameters", "global_step", "epoch",
                                                                  "consumed_samples", "loss_scaler",
                                                                  "pytorch-lightning_version")}
            torch.save(meta, path / DCP_META_FILE)
        self.barrier("after_dcp_save")

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            path = Path(filepath)
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
