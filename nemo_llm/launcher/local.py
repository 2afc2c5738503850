"""torchrun-style local launch: N worker processes on this node, rendezvous on a free port.

Uses torch.distributed's elastic agent (what torchrun runs), so each worker gets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and a worker that fails stops the others. On several
nodes, every node runs the same launch with the same rendezvous endpoint (rdzv_endpoint).
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


def _limit_threads(fn: Callable, nproc_per_node: int, args: tuple) -> Any:
    # Like torchrun: N processes each using every core would oversubscribe the CPU.
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc_per_node))
    return fn(*args)


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
        start_method="spawn",
    )
    try:
        return elastic_launch(config, _limit_threads)(fn, nproc_per_node, args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", str(message))
        raise LaunchError(f"rank {rank} failed (exit code {failure.exitcode}): "
                          f"{str(message).strip().splitlines()[-1] if message else 'see its output above'}") from None
