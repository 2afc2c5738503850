"""A tiny frozen base and a task it cannot know: whether the letter that ends a sentence is in a
hidden set. The answer follows that letter directly, so one attention layer of the frozen base, with
queries that differ by letter, lets the virtual tokens steer each letter's answer."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import compose
from nemo_llm.models.gpt import GPTConfig, GPTModel

LETTERS = list("abcdefgh")
YES = set("acfh")  # the hidden rule
NOUNS = ["car", "hat", "box", "cup"]
TEMPLATE = "<|VIRTUAL_PROMPT_0|> <|VIRTUAL_PROMPT_1|>{sentence}{label}"
# Learning rates at which each style learns the task in 100 steps.
STYLES = {
    "prompt-tuning": ["prompt_learning.optim.lr=0.05"],
    "p-tuning": ["prompt_learning.optim.lr=0.005"],
}


def base_config() -> GPTConfig:
    return GPTConfig(vocab_size=320, max_position_embeddings=64, num_layers=2, hidden_size=64, ffn_hidden_size=128,
                     num_attention_heads=4, num_query_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
                     init_method_std=0.2)  # large weights: a random base with sharp, input-dependent outputs


# Where prompt_config puts the base: the last checkpoint of a run directory, as the training stage
# leaves it, so that the stages find its tokenizer (the run's config.yaml names the byte tokenizer).
BASE = "base_run/checkpoints/last.ckpt"


def write_base(path: Path, seed: int = 0) -> GPTModel:
    """A randomly initialised base saved as a single-file checkpoint of the training stage's format;
    at <run>/checkpoints/last.ckpt the run's config.yaml is written too."""
    torch.manual_seed(seed)
    model = GPTModel(base_config())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"gpt_config": asdict(model.config)}, "global_step": 7, "consumed_samples": 0,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    if path.name == "last.ckpt" and path.parent.name == "checkpoints":
        run_dir = path.parent.parent
        (run_dir / "config.yaml").write_text(f"run_dir: {run_dir}\nmodel:\n  tokenizer:\n    library: byte\n")
    return model


def records(n: int, seed: int, taskname: str = "colour") -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        letter = rng.choice(LETTERS)
        out.append({"taskname": taskname, "sentence": f"{rng.choice(NOUNS)} {letter}",
                    "label": "yes" if letter in YES else "no"})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task(taskname: str = "colour") -> dict:
    return {"taskname": taskname, "prompt_template": TEMPLATE, "total_virtual_tokens": 8,
            "virtual_token_splits": [4, 4], "answer_field": "label", "answer_only_loss": True,
            "truncation_field": "sentence"}


def prompt_config(tmp_path: Path, style: str, overrides: list[str] = (), taskname: str = "colour",
                  max_steps: int = 60) -> DictConfig:
    """A config for prompt learning on the synthetic task (base and data written under tmp_path)."""
    base = tmp_path / BASE
    if not base.exists():
        write_base(base)
    train = write_jsonl(tmp_path / f"{taskname}_train.jsonl", records(400, 1, taskname))
    val = write_jsonl(tmp_path / f"{taskname}_val.jsonl", records(48, 2, taskname))
    cfg = compose(["model.tokenizer.library=byte", f"run_dir={tmp_path / 'run'}", "training.progress_bar=false",
                   f"prompt_learning.language_model_path={base}", f"prompt_learning.virtual_prompt_style={style}",
                   f"prompt_learning.new_tasks=[{taskname}]", f"prompt_learning.data.train_ds={train}",
                   f"prompt_learning.data.validation_ds={val}", "prompt_learning.max_seq_length=32",
                   "prompt_learning.micro_batch_size=16", "prompt_learning.global_batch_size=16",
                   f"prompt_learning.max_steps={max_steps}", "prompt_learning.val_check_interval=1000",
                   "prompt_learning.optim.lr=0.02", "prompt_learning.p_tuning.encoder_hidden=64",
                   "trainer.log_every_n_steps=1000", *overrides])
    return OmegaConf.merge(cfg, {"prompt_learning": {"task_templates": [task(taskname)]}})
