"""torchrun-style local launch: N worker processes on this node, rendezvous on a free port.

Uses torch.distributed's elastic agent (what torchrun runs), so each worker gets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and a worker that fails stops the others. On several
nodes, every node runs the same launch with the same rendezvous endpoint (rdzv_endpoint).

Importing torch, Lightning and the engine costs each process several seconds of CPU. On machines
without GPUs the workers are forked from a fork server that has imported them once; with GPUs they
are spawned, since a library that asks CUDA for its devices at import time would leave every forked
worker unable to use CUDA.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from nemo_llm.errors import NemoLLMError


class LaunchError(NemoLLMError):
    """A worker process failed; the message carries the first failure."""


# Imported once by the fork server, so forked workers start with them loaded.
PRELOAD = ["torch", "torch.distributed.checkpoint", "pytorch_lightning", "nemo_llm.training.pretrain"]
# What the elastic agent sets per worker; everything else comes from the launching process.
_WORKER_ENV = {"LOCAL_RANK", "RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
               "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
               "NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES"}


def _worker(fn: Callable, nproc_per_node: int, env: dict[str, str], cwd: str, args: tuple) -> Any:
    # A forked worker inherits the fork server's environment and directory, which date from the
    # first launch of this process; a spawned one would see the launcher's as they are now.
    own = {k: v for k, v in os.environ.items() if k in _WORKER_ENV or k.startswith("TORCHELASTIC_")}
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(own)
    os.chdir(cwd)
    # Like torchrun: N processes each using every core would oversubscribe the CPU.
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc_per_node))
    return fn(*args)


def _start_method() -> str:
    import multiprocessing

    import torch

    if torch.cuda.is_available():
        return "spawn"
    multiprocessing.set_forkserver_preload(["__main__", *PRELOAD])
    return "forkserver"


def launch_local(fn: Callable, args: tuple, nproc_per_node: int, num_nodes: int = 1,
                 rdzv_endpoint: str = "localhost:0") -> dict[int, Any]:
    """Run fn(*args) in nproc_per_node x num_nodes processes (fn must be importable); returns each local
    rank's return value. Raises LaunchError naming the first failed rank and its error."""
    config = LaunchConfig(
        min_nodes=num_nodes,
        max_nodes=num_nodes,
        nproc_per_node=nproc_per_node,
        run_id=os.environ.get("NEMO_LLM_RUN_ID", uuid.uuid4().hex[:12]),
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint,
        max_restarts=0,
        monitor_interval=0.1,
        start_method=_start_method(),
    )
    try:
        return elastic_launch(config, _worker)(fn, nproc_per_node, dict(os.environ), os.getcwd(), args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", str(message))
        raise LaunchError(f"rank {rank} failed (exit code {failure.exitcode}): "
                          f"{str(message).strip().splitlines()[-1] if message else 'see its output above'}") from None
