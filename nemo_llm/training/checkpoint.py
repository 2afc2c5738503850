"""Reading the model back out of a training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from nemo_llm.errors import NemoLLMError
from nemo_llm.models.gpt import GPTConfig, GPTModel

CHECKPOINT_DIR = "checkpoints"
DCP_META_FILE = "meta.pt"  # beside the shards of a multi-process checkpoint: hyper-parameters, step
LAST_CHECKPOINT = "last.ckpt"


def last_checkpoint_path(run_dir: str | Path) -> Path:
    """<run_dir>/checkpoints/last.ckpt: the final state of the training stage."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


class CheckpointError(NemoLLMError, ValueError):
    """A checkpoint that is missing, truncated, or not one of ours."""


def load_model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPTModel, dict]:
    """(model in eval mode, checkpoint metadata {global_step, consumed_samples}) from a .ckpt written by
    the training stage. Loads with weights_only=True: a checkpoint can never run code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there; run the training stage or set evaluation.checkpoint")
    sharded = path.is_dir()
    try:
        checkpoint = torch.load(path / DCP_META_FILE if sharded else path, map_location=map_location,
                                weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, missing meta.pt, ...
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    try:
        config = GPTConfig(**checkpoint["hyper_parameters"]["gpt_config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a nemo_llm GPT checkpoint (missing {e})") from None
    model = GPTModel(config)
    if sharded:
        # Sharded by the training layout; loading into one full model reshards.
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        try:
            dcp.load({"state_dict": state}, checkpoint_id=str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: cannot be read as a sharded checkpoint ({type(e).__name__}: {e})") from None
    else:
        state = checkpoint.get("state_dict")
        if state is None:
            raise CheckpointError(f"{path}: not a nemo_llm GPT checkpoint (missing 'state_dict')")
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()
    meta = {"global_step": checkpoint.get("global_step"), "consumed_samples": checkpoint.get("consumed_samples")}
    return model, meta
