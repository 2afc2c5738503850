"""Stage training: pretraining with the Lightning Trainer (nemo_llm.training.pretrain)."""

from __future__ import annotations

from omegaconf import DictConfig

from nemo_llm.config import ConfigError
from nemo_llm.stages.base import Stage
from nemo_llm.training.checkpoint import last_checkpoint_path


class TrainingStage(Stage):
    name = "training"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        checkpoints = last_checkpoint_path(cfg.run_dir).parent
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(
                f"{checkpoints} holds checkpoints of an earlier run, which training would overwrite: "
                "choose another run_dir= (or run_name=), or move that directory away")
        world = cfg.trainer.devices * cfg.trainer.num_nodes
        if world > 1:
            raise ConfigError(
                f"trainer.devices x trainer.num_nodes = {world}: training runs in one process in this version; "
                "set trainer.devices=1 trainer.num_nodes=1 (dry_run=true still prints the plan of any layout)")

    def run(self, cfg: DictConfig) -> dict:
        from nemo_llm.training.pretrain import pretrain  # Lightning is imported only when training runs

        return pretrain(cfg)
