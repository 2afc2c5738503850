"""Build an InferenceEngine from the run config, in one process or as one of trainer.devices
workers that share the model at model.tensor_model_parallel_size x pipeline_model_parallel_size
(the rest is data parallel: replicas that split the requests). Weights are cast to the half type
of trainer.precision (bf16-mixed, 16-mixed), else kept in fp32."""

from __future__ import annotations

import os
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from nemo_llm.inference.engine import InferenceEngine
from nemo_llm.parallel.state import ParallelState, destroy_model_parallel, initialize_model_parallel


# Inference keeps the half type a model was trained in (trainer.precision); there are no master weights to keep.
INFERENCE_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def inference_device(cfg: DictConfig) -> torch.device:
    from nemo_llm.plan import Machine, uses_gpu

    if uses_gpu(cfg, Machine.detect()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextmanager
def model_parallel(cfg: DictConfig) -> Iterator[ParallelState | None]:
    """The parallel state of this worker (None in a single process), torn down on exit."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        yield None
        return
    device = inference_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        m = cfg.model
        yield initialize_model_parallel(m.tensor_model_parallel_size, m.pipeline_model_parallel_size,
                                        device_type=device.type)
    finally:
        destroy_model_parallel()
        dist.destroy_process_group()


def stage_checkpoint(section: DictConfig, run_dir: str) -> Path:
    """The model an inference or evaluation section names: its checkpoint; when that is null, the base
    of its prompt_table if it has one, else the training stage's last checkpoint in run_dir."""
    from nemo_llm.training.checkpoint import checkpoint_or_last

    if section.checkpoint is None and section.get("prompt_table"):
        from nemo_llm.prompt_learning.inference import prompt_base

        return prompt_base(section.prompt_table)
    return checkpoint_or_last(section.checkpoint, run_dir)


def check_prompt_table(cfg: DictConfig, key: str) -> None:
    """ConfigError when cfg.<key>.prompt_table (inference or evaluation) is set, missing, and not made by a
    prompt_learning stage earlier in the run."""
    from nemo_llm.config import ConfigError

    table = cfg[key].get("prompt_table")
    earlier = list(cfg.stages)[:list(cfg.stages).index(key)] if key in cfg.stages else []
    if table and not Path(table).is_file() and "prompt_learning" not in earlier:
        raise ConfigError(f"{key}.prompt_table={table}: no such file; run the prompt_learning stage first or give "
                          "the prompt_table.pt it wrote")


def engine_from_config(cfg: DictConfig, checkpoint: str | Path, state: ParallelState | None,
                       prompt_table: str | None = None, default_task: str | None = None) -> InferenceEngine:
    """Load checkpoint (anything nemo_llm.load accepts; with a prompt_table, the base checkpoint the
    prompts were learned on) and spread it over state's layout. Pipeline stages split the layers as
    model.pipeline_model_parallel_layer_split says (equal shares when null); virtual pipeline chunks
    and sequence parallelism are training-only."""
    split = cfg.model.pipeline_model_parallel_layer_split
    split = list(split) if split else None
    device, dtype = inference_device(cfg), INFERENCE_DTYPES.get(cfg.trainer.precision)
    if prompt_table is None:
        return InferenceEngine.load(str(checkpoint), device, state, split, dtype)
    from nemo_llm.prompt_learning.inference import load_prompt_model

    model, tokenizer = load_prompt_model(prompt_table, checkpoint, default_task=default_task, device=device)
    return InferenceEngine.from_model(model.to(dtype) if dtype is not None else model, tokenizer, state, split)
