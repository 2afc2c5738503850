"""A stage turns the config into work and writes its outputs into the run directory."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.launcher import launch_local
from nemo_llm.launcher.slurm_task import RANK_PER_TASK


class Stage(ABC):
    name: str
    # Whether the stage runs the model, so the plan's layout must fit this machine.
    runs_model: bool = False

    def check(self, cfg: DictConfig) -> None:
        """Raise ConfigError if this stage cannot run cfg; called for every stage before any runs."""

    @abstractmethod
    def run(self, cfg: DictConfig) -> dict:
        """Do the work; return a JSON-serialisable summary."""


def run_on_devices(worker: Callable[[str], Any], cfg: DictConfig) -> Any:
    """worker(config as YAML) in this process for one device, else in trainer.devices local processes
    per node (torchrun-style environment); returns the result of this node's first rank. worker must
    be importable (a module-level function)."""
    t = cfg.trainer
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if t.devices * t.num_nodes == 1:
        return worker(config_yaml)
    if os.environ.get(RANK_PER_TASK) == "1":  # a Slurm task: this process is one rank already
        world = int(os.environ["WORLD_SIZE"])
        if world != t.devices * t.num_nodes:
            raise ConfigError(f"the job has {world} tasks but trainer.devices x num_nodes = "
                              f"{t.devices * t.num_nodes}: one task per device")
        return worker(config_yaml)
    endpoint = "localhost:0"
    if t.num_nodes > 1:
        endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}"
    results = launch_local(worker, (config_yaml,), t.devices, t.num_nodes, endpoint)
    return results[min(results)]
