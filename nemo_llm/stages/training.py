"""Stage training: pretraining with the Lightning Trainer (nemo_llm.training.pretrain), in this
process for one device, or in trainer.devices local worker processes."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.launcher import launch_local
from nemo_llm.stages.base import Stage
from nemo_llm.training.checkpoint import last_checkpoint_path


def _train_worker(config_yaml: str) -> dict:
    from nemo_llm.training.pretrain import pretrain  # Lightning is imported only where training runs

    return pretrain(OmegaConf.create(config_yaml))


class TrainingStage(Stage):
    name = "training"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        checkpoints = last_checkpoint_path(cfg.run_dir).parent
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(
                f"{checkpoints} holds checkpoints of an earlier run, which training would overwrite: "
                "choose another run_dir= (or run_name=), or move that directory away")
        if cfg.trainer.num_nodes > 1 and "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                f"trainer.num_nodes={cfg.trainer.num_nodes}: a multi-node run is started on every node by a "
                "cluster launcher that sets MASTER_ADDR and MASTER_PORT; locally use trainer.num_nodes=1")

    def run(self, cfg: DictConfig) -> dict:
        t = cfg.trainer
        if t.devices * t.num_nodes == 1:
            return _train_worker(OmegaConf.to_yaml(cfg, resolve=True))
        endpoint = "localhost:0"
        if t.num_nodes > 1:
            endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}"
        results = launch_local(_train_worker, (OmegaConf.to_yaml(cfg, resolve=True),), t.devices, t.num_nodes,
                               endpoint)
        return results[min(results)]
