"""Stage prompt_learning: P-tuning or prompt tuning of cfg.prompt_learning.new_tasks on a frozen base
(nemo_llm.prompt_learning), in trainer.devices processes; then task accuracy on validation_ds with
the baked prompts. Writes <prompt_learning.output_dir>/ (prompts.pt, prompt_table.pt, metrics.jsonl,
checkpoints/, results.json)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.stages.base import Stage, run_on_devices


def _prompt_learning_worker(config_yaml: str) -> dict:
    from nemo_llm.prompt_learning.training import train_prompts  # Lightning only where training runs

    return train_prompts(OmegaConf.create(config_yaml))


class PromptLearningStage(Stage):
    name = "prompt_learning"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        p = cfg.prompt_learning
        from nemo_llm.prompt_learning.training import base_checkpoint_path

        base = base_checkpoint_path(cfg)
        trains_first = "training" in cfg.stages and cfg.stages.index("training") < cfg.stages.index(self.name)
        if not trains_first and not base.exists():
            raise ConfigError(f"prompt_learning.language_model_path={base}: no checkpoint there; run the training "
                              "stage first or point it at a base checkpoint")
        for key in ("train_ds", "validation_ds"):
            path = p.data[key]
            prepared_earlier = "data_preparation" in cfg.stages
            if path is not None and not Path(path).is_file() and not prepared_earlier:
                raise ConfigError(f"prompt_learning.data.{key}={path}: no such file; write the jsonl records first")

    def run(self, cfg: DictConfig) -> dict:
        from nemo_llm.prompt_learning.data import read_jsonl
        from nemo_llm.prompt_learning.inference import prompt_engine, task_accuracy
        from nemo_llm.tokenizers import build_tokenizer

        result = run_on_devices(_prompt_learning_worker, cfg)
        p = cfg.prompt_learning
        if p.data.validation_ds:
            engine = prompt_engine(result["prompt_table"], build_tokenizer(cfg.model.tokenizer))
            records = read_jsonl(p.data.validation_ds)
            records = records[:p.eval_limit] if p.eval_limit else records
            result["validation"] = task_accuracy(engine, records)
            for task, scores in result["validation"].items():
                print(f"prompt learning: task {task} accuracy {scores['accuracy']:.3f} on {scores['examples']} "
                      "validation records", flush=True)
        Path(p.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(p.output_dir) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
