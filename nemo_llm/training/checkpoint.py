"""Checkpoints on disk: finding the latest complete one, checking it before loading, and reading
the model back out of it. Nothing here runs pickled code from a checkpoint: meta.pt and
single-file checkpoints are read with torch.load(weights_only=True), and a DCP directory's
pickled metadata and non-tensor entries are checked by restricted unpicklers before DCP reads them.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from nemo_llm.errors import NemoLLMError
from nemo_llm.models.gpt import GPTConfig, GPTModel

CHECKPOINT_DIR = "checkpoints"
DCP_META_FILE = "meta.pt"  # in every checkpoint directory, written last: hyper-parameters, step, loops
LAST_CHECKPOINT = "last.ckpt"
DCP_METADATA_FILE = ".metadata"


def last_checkpoint_path(run_dir: str | Path) -> Path:
    """<run_dir>/checkpoints/last.ckpt: the final state of the training stage."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def checkpoint_or_last(path: str | Path | None, run_dir: str | Path) -> Path:
    """path when a stage's config names one, else the training stage's last checkpoint in run_dir."""
    return Path(path) if path else last_checkpoint_path(run_dir)


class CheckpointError(NemoLLMError, ValueError):
    """A checkpoint that is missing, truncated, of another model, or not one of ours."""


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """meta.pt of a checkpoint directory (or the whole of a single-file checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there")
    if path.is_dir() and not (path / DCP_META_FILE).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {DCP_META_FILE}; its save was interrupted): "
                              "use another one")
    try:
        return torch.load(path / DCP_META_FILE if path.is_dir() else path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, code in the pickle, ...
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def find_latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint (meta.pt present) with the highest step in `directory`, or None."""
    best: tuple[int, str] | None = None
    for candidate in Path(directory).glob("*.ckpt"):
        if not (candidate / DCP_META_FILE).is_file():
            continue  # a single file or an interrupted save
        try:
            step = int(read_checkpoint_meta(candidate).get("global_step", -1))
        except CheckpointError:
            continue
        if best is None or (step, candidate.name == LAST_CHECKPOINT) > (best[0], best[1] == LAST_CHECKPOINT):
            best = (step, candidate.name)
    return Path(directory) / best[1] if best else None


class _MetadataUnpickler(pickle.Unpickler):
    """Only what a DCP .metadata file holds: its own dataclasses, torch sizes and dtypes, builtins."""

    _BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bool", "slice"}
    # A layout is looked up by name; the checkpoint's own path is recorded as a Path.
    _OTHERS = {("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
               ("pathlib", "PurePosixPath"), ("pathlib", "Path")}

    def find_class(self, module: str, name: str):
        if module.startswith("torch.distributed.checkpoint") or (module == "collections" and name == "OrderedDict"):
            return super().find_class(module, name)
        if (module == "builtins" and name in self._BUILTINS) or (module, name) in self._OTHERS:
            return super().find_class(module, name)
        if module == "torch":
            value = getattr(torch, name, None)
            if name == "Size" or isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def _checked_reader(path: Path) -> FileSystemReader:
    metadata_file = path / DCP_METADATA_FILE
    if not metadata_file.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {DCP_METADATA_FILE}): use another one")
    try:
        with open(metadata_file, "rb") as f:
            _MetadataUnpickler(f).load()
    except Exception as e:
        raise CheckpointError(f"{path}: refusing its metadata ({type(e).__name__}: {e})") from None
    return FileSystemReader(str(path))


class _SafeLoadPlanner(DefaultLoadPlanner):
    """DCP reads non-tensor entries with torch.load(weights_only=False); each is first read with
    weights_only=True, which refuses anything that would run code."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"refusing checkpoint entry {read_item.dest_index.fqn}: {e}") from None
        value.seek(0)
        super().load_bytes(read_item, value)


def check_checkpoint_shapes(path: str | Path, expected: dict[str, Any]) -> set[str]:
    """Compare the model tensors a DCP checkpoint holds with `expected` (name -> tensor of the full
    shape, DTensors included); raise listing every mismatched or missing one. Returns the names
    of every entry in the checkpoint."""
    path = Path(path)
    metadata = _checked_reader(path).read_metadata().state_dict_metadata
    problems = []
    for name, tensor in expected.items():
        stored = metadata.get(f"state_dict.{name}")
        if stored is None:
            problems.append(f"{name} missing")
        elif hasattr(stored, "size") and tuple(stored.size) != tuple(tensor.shape):
            problems.append(f"{name} {tuple(stored.size)} in the checkpoint, {tuple(tensor.shape)} in the model")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"{path} does not fit this model ({shown}): the model config differs from the "
                              "checkpoint's")
    return set(metadata)


def load_dcp(path: str | Path, state: dict[str, Any]) -> None:
    """dcp.load into `state` (in place), through the checks above; errors name the checkpoint."""
    path = Path(path)
    reader = _checked_reader(path)
    try:
        dcp.load(state, storage_reader=reader, planner=_SafeLoadPlanner())
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # a truncated shard file, a missing entry, ...
        # DCP wraps each rank's failure (and derives from BaseException); the first says what broke.
        cause = next(iter(e.failures.values()), e) if isinstance(e, CheckpointException) else e
        if isinstance(cause, CheckpointError):
            raise cause from None
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise CheckpointError(f"{path}: cannot be read ({type(cause).__name__}: {first}); the checkpoint is "
                              "incomplete or damaged: use another one") from None


def load_model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPTModel, dict]:
    """(model in eval mode, checkpoint metadata {global_step, consumed_samples}) from a checkpoint of
    the training stage (a DCP directory of any layout, or a single .ckpt file)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there; run the training stage or set evaluation.checkpoint")
    checkpoint = read_checkpoint_meta(path)
    try:
        config = GPTConfig(**checkpoint["hyper_parameters"]["gpt_config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a nemo_llm GPT checkpoint (missing {e})") from None
    model = GPTModel(config)
    if path.is_dir():
        # Sharded by the training layout; loading into one full model reshards.
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        check_checkpoint_shapes(path, state)
        load_dcp(path, {"state_dict": state})
    else:
        state = checkpoint.get("state_dict")
        if state is None:
            raise CheckpointError(f"{path}: not a nemo_llm GPT checkpoint (missing 'state_dict')")
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.to(map_location).eval()
    meta = {"global_step": checkpoint.get("global_step"), "consumed_samples": checkpoint.get("consumed_samples")}
    return model, meta
