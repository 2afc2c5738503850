"""Stage prompt_learning: P-tuning or prompt tuning of cfg.prompt_learning.new_tasks on a frozen base
(nemo_llm.prompt_learning), in trainer.devices processes; then task accuracy on validation_ds with
the baked prompts. With prompt_learning.data.squad, SQuAD is first converted into train_ds and
validation_ds. Writes <prompt_learning.output_dir>/ (prompts.pt, prompt_table.pt, metrics.jsonl,
checkpoints/, results.json)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.errors import Preempted
from nemo_llm.stages.base import Stage, run_on_devices
from nemo_llm.training.checkpoint import CHECKPOINT_DIR


def _prompt_learning_worker(config_yaml: str) -> dict:
    from nemo_llm.prompt_learning.training import train_prompts  # Lightning only where training runs

    return train_prompts(OmegaConf.create(config_yaml))


def prepare_squad(data: DictConfig) -> dict:
    """Convert SQuAD into data.train_ds and data.validation_ds where those files do not exist yet;
    returns {split: {records, unanswerable}} of what was converted."""
    from nemo_llm.prompt_learning.squad import convert_squad

    squad, converted = data.squad, {}
    for split, output, local in (("train", data.train_ds, squad.train_file),
                                 ("validation", data.validation_ds, squad.validation_file)):
        if output is None or Path(output).is_file():
            continue
        source = local or squad.dataset
        converted[split] = convert_squad(source, split, output, squad.taskname)
        print(f"prompt learning: {converted[split]['records']} SQuAD {split} questions from {source} -> {output} "
              f"({converted[split]['unanswerable']} unanswerable left out)", flush=True)
    return converted


class PromptLearningStage(Stage):
    name = "prompt_learning"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        p = cfg.prompt_learning
        from nemo_llm.prompt_learning.training import base_checkpoint_path

        checkpoints = Path(p.output_dir) / CHECKPOINT_DIR
        if cfg.resume is None and checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(f"{checkpoints} holds prompt-learning checkpoints of an earlier run, which this one would "
                              "overwrite: continue it with resume=auto, or choose another prompt_learning.output_dir")
        base = base_checkpoint_path(cfg)
        trains_first = "training" in cfg.stages and cfg.stages.index("training") < cfg.stages.index(self.name)
        if not trains_first and not base.exists():
            raise ConfigError(f"prompt_learning.language_model_path={base}: no checkpoint there; run the training "
                              "stage first or point it at a base checkpoint")
        squad = p.data.squad
        for key in ("train_ds", "validation_ds"):
            path = p.data[key]
            prepared_earlier = "data_preparation" in cfg.stages
            if path is not None and not Path(path).is_file() and not prepared_earlier and squad is None:
                raise ConfigError(f"prompt_learning.data.{key}={path}: no such file; write the jsonl records first")
        if squad is not None:
            for key in ("train_file", "validation_file"):
                if squad[key] is not None and not Path(squad[key]).is_file():
                    raise ConfigError(f"prompt_learning.data.squad.{key}={squad[key]}: no such file")

    def run(self, cfg: DictConfig) -> dict:
        from nemo_llm.prompt_learning.data import read_jsonl
        from nemo_llm.prompt_learning.inference import prompt_engine, task_accuracy
        from nemo_llm.tokenizers import build_tokenizer

        p = cfg.prompt_learning
        converted = prepare_squad(p.data) if p.data.squad is not None else {}
        result = run_on_devices(_prompt_learning_worker, cfg)
        if result["preempted"]:
            raise Preempted(f"prompt learning stopped by a signal at step {result['steps']}, after saving its "
                            "checkpoint; run the same command with resume=auto to continue")
        if converted:
            result["squad"] = converted
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
