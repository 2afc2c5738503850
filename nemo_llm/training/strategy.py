"""MegatronStrategy: Lightning's process-group handling around nemo_llm's parallel engine.

Lightning starts (or joins) the process group; this strategy then builds the (pp, dp, tp) mesh,
and the LightningModule's configure_model() builds the GPTEngine on it. Nothing is wrapped in
DDP: the engine reduces gradients itself.

Checkpoints are torch.distributed.checkpoint (DCP) directories named like files (`step8.ckpt`,
`last.ckpt`), whatever the number of processes: each rank writes its own shards of the model and
of the optimizer, keyed by the full model's names (`model.decoder.layers.3....`, and the optimizer
state flattened per parameter), so a checkpoint loads at any other layout (DCP reshards).
meta.pt holds the rest (hyper-parameters, step, consumed samples, loops, LR schedule, loss
scaler, callbacks). A checkpoint is written to `<name>.tmp` and renamed once complete, meta.pt
last, so a crash during a save leaves the previous checkpoints intact and nothing that looks
complete. With async_save the shards are written by a background thread from copies while
training continues; the checkpoint is committed (meta.pt, rename) before the next save or at the
end of training.
"""

from __future__ import annotations

import copy
import re
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.utils._pytree import tree_map
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

from nemo_llm.parallel.state import ParallelState, destroy_model_parallel, initialize_model_parallel
from nemo_llm.training.checkpoint import (DCP_META_FILE, CheckpointError, check_checkpoint_shapes, load_dcp,
                                          read_checkpoint_meta)

_PART_PREFIX = re.compile(r"^engine\.parts\.\d+\.")
_OPTIM_PART = re.compile(r"(?<=^state\.)parts\.\d+\.|(?<=^param_groups\.)parts\.\d+\.")
# Flattened per parameter, the optimizer state has no positional parameter ids: a checkpoint of one
# layout maps onto another by name.
_OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_META_KEYS = ("hyper_parameters", "global_step", "epoch", "consumed_samples", "consecutive_bad_steps", "loss_scaler",
              "loops", "lr_schedulers", "callbacks", "pytorch-lightning_version")


class MegatronStrategy(DDPStrategy):
    strategy_name = "megatron"

    def __init__(self, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                 virtual_pipeline_model_parallel_size: int | None = None, async_save: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.tensor_model_parallel_size = tensor_model_parallel_size
        self.pipeline_model_parallel_size = pipeline_model_parallel_size
        self.virtual_pipeline_model_parallel_size = virtual_pipeline_model_parallel_size
        self.parallel_state: ParallelState | None = None
        self.async_save = async_save
        self._checkpoint_group = None
        self._pending: tuple[Future, Path, Path, dict] | None = None  # an async save not yet committed

    def setup_environment(self) -> None:
        super().setup_environment()
        self.parallel_state = initialize_model_parallel(
            self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
            self.virtual_pipeline_model_parallel_size, device_type=self.root_device.type)
        if self.async_save:
            # An async save plans and finishes its writes from a background thread on CPU tensors,
            # which needs a gloo group whatever backend training uses.
            self._checkpoint_group = dist.new_group(backend="gloo")

    def configure_ddp(self) -> None:
        """The engine already does data parallelism (FSDP2 or its own gradient all-reduce)."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        # Loading is in place, into the engine's sharded parameters and the optimizer's states, so
        # both must exist first.
        return True

    def teardown(self) -> None:
        self.finish_pending_save()
        destroy_model_parallel()
        super().teardown()

    # Names ------------------------------------------------------------------------------------

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Keys of the full model, prefixed 'model.', whichever stage or chunk holds the tensor."""
        state = self.lightning_module.state_dict()
        return {_PART_PREFIX.sub("model.", key): value for key, value in state.items()}

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """Optimizer state flattened per parameter and keyed by the full model's parameter names."""
        return _full_model_names(_engine_optimizer_state(self.lightning_module.engine, optimizer))

    # Saving -----------------------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        self._refuse_non_finite(checkpoint["state_dict"], filepath)
        self.finish_pending_save()  # first: it may be writing to the very name this save uses
        path = Path(filepath)
        partial = path.with_name(path.name + ".tmp")
        if self.is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)  # a save that crashed earlier
        self.barrier("before_checkpoint_save")
        tensors = {"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint.get("optimizer_states", [])}
        # A copy: callbacks hand out their live state (ModelCheckpoint's dict of best paths), which
        # changes before an async save is committed.
        meta = copy.deepcopy({k: v for k, v in checkpoint.items() if k in _META_KEYS})
        if self.async_save:
            # Copies first: training goes on changing the parameters and optimizer states in place
            # while the background thread writes.
            tensors = tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tensors)
            future = dcp.async_save(tensors, checkpoint_id=str(partial), process_group=self._checkpoint_group)
            self._pending = (future, partial, path, meta)
            return
        dcp.save(tensors, checkpoint_id=str(partial))
        self._commit(partial, path, meta)

    def finish_pending_save(self) -> None:
        """Wait for the async save in flight, then commit it (before the next save, at the end)."""
        if self._pending is None:
            return
        future, partial, path, meta = self._pending
        self._pending = None
        future.result()
        self._commit(partial, path, meta)

    def _commit(self, partial: Path, path: Path, meta: dict) -> None:
        """Every rank's shards are in `partial`: add meta.pt, the mark of a complete checkpoint, and
        put it in place of `path`."""
        self.barrier("checkpoint_shards_written")
        if self.is_global_zero:
            torch.save(meta, partial / DCP_META_FILE)
            replaced = path.with_name(path.name + ".old")
            if path.exists():
                path.replace(replaced) if path.is_dir() else path.rename(replaced)
            partial.replace(path)
            shutil.rmtree(replaced, ignore_errors=True) if replaced.is_dir() else replaced.unlink(missing_ok=True)
        self.barrier("checkpoint_committed")

    def _refuse_non_finite(self, state_dict: dict[str, Any], filepath) -> None:
        local = [t.to_local() if hasattr(t, "to_local") else t for t in state_dict.values()
                 if isinstance(t, torch.Tensor) and t.is_floating_point()]
        bad = torch.tensor(float(any(not torch.isfinite(t).all() for t in local)), device=self.root_device)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            raise CheckpointError(f"{filepath}: not saved, the model holds NaN or inf values; the last complete "
                                  "checkpoint is unchanged (lower model.optim.lr or use trainer.precision=bf16-mixed)")

    def remove_checkpoint(self, filepath) -> None:
        if self._pending is not None and self._pending[2] == Path(filepath):
            self.finish_pending_save()  # removing the checkpoint being written: let it land first
        if self.is_global_zero:
            path = Path(filepath)
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # Loading ----------------------------------------------------------------------------------

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Loads model and optimizer shards of this rank's layout in place (DCP reshards a checkpoint
        of any other layout); returns the metadata for Lightning to restore loops and schedules."""
        path = Path(checkpoint_path)
        meta = read_checkpoint_meta(path)
        model_state = self.lightning_module_state_dict()
        engine, optimizer = self.lightning_module.engine, self.optimizers[0]
        own = _engine_optimizer_state(engine, optimizer)  # the engine's names
        optim_state = _full_model_names(own)
        available = check_checkpoint_shapes(path, model_state)
        aliases = _tied_output_aliases(optim_state, available)
        request = {"state_dict": model_state,
                   "optimizer_states": [{aliases.get(k, k): v for k, v in optim_state.items()}]}
        load_dcp(path, request)
        loaded = request["optimizer_states"][0]
        optim_state = {k: loaded[aliases.get(k, k)] for k in optim_state}
        if own:
            set_optimizer_state_dict(engine, optimizer, {key: optim_state[_OPTIM_PART.sub("", key)] for key in own},
                                     options=_OPTIM_OPTIONS)
        meta["state_dict"], meta["optimizer_states"] = model_state, [optim_state]
        return meta

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        """Done in load_checkpoint: DCP wrote into the parameters' own (sharded) storage."""

    def load_optimizer_state_dict(self, checkpoint) -> None:
        """Done in load_checkpoint, by parameter name."""


def _engine_optimizer_state(engine, optimizer) -> dict[str, Any]:
    """The flattened optimizer state under the engine's names; {} on a rank with nothing to train (a
    pipeline stage of a frozen base in prompt learning), where torch's helper refuses an empty state."""
    if not any(group["params"] for group in optimizer.param_groups):
        return {}
    return get_optimizer_state_dict(engine, optimizer, options=_OPTIM_OPTIONS)


def _full_model_names(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """Flattened optimizer state with the engine's `parts.<k>.` prefixes dropped from the names."""
    return {_OPTIM_PART.sub("", key): value for key, value in optimizer_state.items()}


def _tied_output_aliases(optim_state: dict[str, Any], available: set[str]) -> dict[str, str]:
    """Optimizer keys of a last pipeline stage's copy of tied embeddings that the checkpoint lacks
    (it was saved with the tied weight held once, under the embedding's name) -> that name."""
    aliases = {}
    for key in optim_state:
        if "output_layer.weight" in key and f"optimizer_states.0.{key}" not in available:
            alias = key.replace("output_layer.weight", "embedding.word_embeddings.weight")
            if f"optimizer_states.0.{alias}" in available:
                aliases[key] = alias
    return aliases
