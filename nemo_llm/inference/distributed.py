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


def engine_from_config(cfg: DictConfig, checkpoint: str | Path, state: ParallelState | None) -> InferenceEngine:
    """Load checkpoint (anything nemo_llm.load accepts) and spread it over state's layout.
    Pipeline stages split the layers as model.pipeline_model_parallel_layer_split says (equal shares
    when null); virtual pipeline chunks and sequence parallelism are training-only."""
    split = cfg.model.pipeline_model_parallel_layer_split
    return InferenceEngine.load(str(checkpoint), inference_device(cfg), state, list(split) if split else None,
                                INFERENCE_DTYPES.get(cfg.trainer.precision))
