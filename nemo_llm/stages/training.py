"""Stage training: pretraining with the Lightning Trainer (nemo_llm.training.pretrain), in this
process for one device, or in trainer.devices local worker processes."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.stages.base import Stage, run_on_devices
from nemo_llm.errors import Preempted
from nemo_llm.training.checkpoint import CheckpointError, last_checkpoint_path, read_checkpoint_meta


def _train_worker(config_yaml: str) -> dict:
    from nemo_llm.training.pretrain import pretrain  # Lightning is imported only where training runs

    return pretrain(OmegaConf.create(config_yaml))


class TrainingStage(Stage):
    name = "training"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        checkpoints = last_checkpoint_path(cfg.run_dir).parent
        if cfg.resume is None and checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(
                f"{checkpoints} holds checkpoints of an earlier run, which training would overwrite: "
                "continue it with resume=auto, or choose another run_dir= (or run_name=)")
        if cfg.resume not in (None, "auto"):
            try:
                read_checkpoint_meta(cfg.resume)  # a missing, incomplete or foreign checkpoint fails here
            except CheckpointError as e:
                raise ConfigError(f"resume={cfg.resume}: {e}") from None
        if cfg.trainer.num_nodes > 1 and "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                f"trainer.num_nodes={cfg.trainer.num_nodes}: a multi-node run is started on every node by a "
                "cluster launcher that sets MASTER_ADDR and MASTER_PORT; locally use trainer.num_nodes=1")

    def run(self, cfg: DictConfig) -> dict:
        result = run_on_devices(_train_worker, cfg)
        if result["preempted"]:
            raise Preempted(f"stopped by a signal at step {result['steps']}, after saving {result['last_checkpoint']}; "
                            "run the same command with resume=auto to continue")
        return result
