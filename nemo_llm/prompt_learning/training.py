"""Prompt learning through the pretraining stack: the same LightningModule, strategy, engine,
optimizer and schedule, with a model whose base is frozen. Only the prompt modules have
requires_grad, so only they get gradients, reach the optimizer and enter checkpoints.

Runs in every process of the layout (run_on_devices); writes <output_dir>/:
  prompts.pt        the learned prompts (p-tuning encoders or tables) + the base reference,
  prompt_table.pt   the same baked into tables for inference,
  checkpoints/last.ckpt  prompt parameters and optimizer state (DCP, for resuming),
  metrics.jsonl     per-step loss, lr, grad_norm.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from nemo_llm.models.gpt import GPTModel
from nemo_llm.plan import forward_flops_per_token
from nemo_llm.prompt_learning.data import PromptDataModule, PromptDataset, read_jsonl
from nemo_llm.prompt_learning.embedding import PROMPTS_PREFIX, freeze_all_but, prompt_state_dict
from nemo_llm.prompt_learning.prompts import (add_task, attach_prompts, bake, base_fingerprint, build_prompt_file,
                                              read_prompt_file, save_prompt_file, virtual_tokens)
from nemo_llm.prompt_learning.templates import PromptTokenizer, TaskTemplate, VirtualTokens
from nemo_llm.tokenizers import build_tokenizer
from nemo_llm.training.checkpoint import last_checkpoint_path, load_model_from_checkpoint, read_checkpoint_meta
from nemo_llm.training.module import GPTPretrainModule

PROMPTS_FILE = "prompts.pt"
TABLE_FILE = "prompt_table.pt"


def task_entries(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{taskname: {template, style, p_tuning}} of the tasks trained in this run, in order."""
    p_tuning = settings["p_tuning"] if settings["virtual_prompt_style"] == "p-tuning" else None
    return {t["taskname"]: {"template": TaskTemplate(**t).to_dict(), "style": settings["virtual_prompt_style"],
                            "p_tuning": p_tuning} for t in settings["new_tasks"]}


def build_prompt_model(settings: dict[str, Any]) -> tuple[GPTModel, dict[str, Any], dict[str, dict[str, Any]]]:
    """(model, base fingerprint, every task's entry): the base checkpoint with the prompt modules of
    restore_path's tasks (frozen) and fresh ones for new_tasks (trainable), everything else frozen.

    settings: base_checkpoint, restore_path, new_tasks (template dicts), virtual_prompt_style,
    p_tuning, seed."""
    model, meta = load_model_from_checkpoint(settings["base_checkpoint"])
    fingerprint = base_fingerprint(model, meta["global_step"])
    entries: dict[str, dict[str, Any]] = {}
    if settings.get("restore_path"):
        existing = read_prompt_file(settings["restore_path"])
        attach_prompts(model, existing, fingerprint, settings["base_checkpoint"])
        entries.update(existing["tasks"])
    for offset, (name, entry) in enumerate(task_entries(settings).items()):
        add_task(model, TaskTemplate(**entry["template"]), entry["style"], entry["p_tuning"] or {},
                 settings["seed"] + offset)
        entries[name] = entry
    freeze_all_but(model, [t["taskname"] for t in settings["new_tasks"]])
    return model.train(), fingerprint, entries


class PromptLearningModule(GPTPretrainModule):
    """GPTPretrainModule over a frozen base with prompts; its checkpoints hold the prompts only."""

    def __init__(self, prompt_learning: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.fingerprint: dict[str, Any] | None = None
        self.tasks: dict[str, dict[str, Any]] = {}

    def build_model(self) -> GPTModel:
        model, self.fingerprint, self.tasks = build_prompt_model(self.hparams.prompt_learning)
        return model

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The base is a reference (hyper_parameters.prompt_learning.base_checkpoint), not a copy.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if f".{PROMPTS_PREFIX}" in k)

    def prompt_file(self) -> dict[str, Any] | None:
        """The prompt file of the current prompts, on ranks that hold the first pipeline stage (None
        elsewhere). Every rank of the first stage must call it (FSDP gathers)."""
        if not self.engine.holds_first_stage:
            return None
        part = self.engine.parts[0]
        return build_prompt_file(part, self.tasks, prompt_state_dict(part),
                                 self.hparams.prompt_learning["base_checkpoint"], self.fingerprint)


def prompt_learning_settings(cfg: DictConfig) -> dict[str, Any]:
    p = cfg.prompt_learning
    new = set(p.new_tasks)
    templates = [OmegaConf.to_container(t, resolve=True) for t in p.task_templates if t.taskname in new]
    return {"base_checkpoint": str(base_checkpoint_path(cfg)), "restore_path": p.restore_path,
            "new_tasks": templates, "virtual_prompt_style": p.virtual_prompt_style,
            "p_tuning": OmegaConf.to_container(p.p_tuning, resolve=True), "seed": cfg.seed}


def base_checkpoint_path(cfg: DictConfig) -> Path:
    path = cfg.prompt_learning.language_model_path
    return Path(path) if path is not None else last_checkpoint_path(cfg.run_dir)


def prompt_resume_checkpoint(cfg: DictConfig) -> Path | None:
    """Where prompt learning continues from: with resume set (auto, or a path of the training stage's),
    the latest complete checkpoint in <output_dir>/checkpoints, or resume itself when it lies there."""
    from nemo_llm.training.checkpoint import CHECKPOINT_DIR, find_latest_checkpoint

    if cfg.resume is None:
        return None
    directory = Path(cfg.prompt_learning.output_dir) / CHECKPOINT_DIR
    if cfg.resume != "auto" and Path(cfg.resume).resolve().parent == directory.resolve():
        return Path(cfg.resume)
    return find_latest_checkpoint(directory)


def prompt_vocabulary(settings: dict[str, Any], first_virtual_id: int) -> VirtualTokens:
    vocab = VirtualTokens(first_virtual_id)
    if settings.get("restore_path"):
        for task in virtual_tokens(read_prompt_file(settings["restore_path"])).tasks.values():
            vocab.add(task)
    for entry in task_entries(settings).values():
        vocab.add(TaskTemplate(**entry["template"]))
    return vocab


def train_prompts(cfg: DictConfig) -> dict[str, Any]:
    """Learn the prompts of cfg.prompt_learning.new_tasks on the frozen base; returns a summary."""
    return fit_prompts(cfg)[1]


def fit_prompts(cfg: DictConfig) -> tuple[PromptLearningModule, dict[str, Any]]:
    """train_prompts, also returning the trained module (its engine holds this rank's parts)."""
    from nemo_llm.training.callbacks import StepMetrics
    from nemo_llm.training.pretrain import build_trainer, checkpoint_callbacks, engine_settings

    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    p = cfg.prompt_learning
    out_dir = Path(p.output_dir)
    settings = prompt_learning_settings(cfg)
    gpt_config = read_checkpoint_meta(settings["base_checkpoint"])["hyper_parameters"]["gpt_config"]
    seq_length = p.max_seq_length or gpt_config["max_position_embeddings"]
    tokenizer = PromptTokenizer(build_tokenizer(cfg.model.tokenizer), prompt_vocabulary(settings, gpt_config["vocab_size"]))
    tasks = [t["taskname"] for t in settings["new_tasks"]]
    train = PromptDataset(read_jsonl(p.data.train_ds), tokenizer, tasks, seq_length)
    validation = PromptDataset(read_jsonl(p.data.validation_ds), tokenizer, tasks, seq_length) \
        if p.data.validation_ds else None
    data = PromptDataModule(train, validation, p.global_batch_size, p.max_steps, cfg.seed)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = PromptLearningModule(
        prompt_learning=settings, gpt_config=gpt_config, optim=OmegaConf.to_container(p.optim, resolve=True),
        micro_batch_size=p.micro_batch_size, global_batch_size=p.global_batch_size, max_steps=p.max_steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val, engine=asdict(engine_settings(cfg)), seed=cfg.seed,
        max_consecutive_bad_steps=cfg.training.max_consecutive_bad_steps)
    # The trainer of pretraining, with this stage's steps, validation and directory.
    trainer_cfg = OmegaConf.merge(cfg, {"run_dir": str(out_dir), "trainer": {
        "max_steps": p.max_steps, "val_check_interval": p.val_check_interval,
        "limit_val_batches": p.limit_val_batches}, "training": {"tensorboard": False}})
    t = cfg.trainer
    metrics = StepMetrics(out_dir, tokens_per_step=p.global_batch_size * seq_length,
                          flops_per_step=forward_flops_per_token(SimpleNamespace(**gpt_config), seq_length,
                                                                 gpt_config["vocab_size"]).model_flops(
                              p.global_batch_size * seq_length),
                          world_size=t.devices * t.num_nodes, peak_tflops_per_device=t.peak_tflops_per_device or 1.0,
                          log_every_n_steps=t.log_every_n_steps, print_lines=not cfg.training.progress_bar)
    preemption, checkpointing = checkpoint_callbacks(cfg.training.checkpoint, out_dir, data.validation is not None)
    trainer = build_trainer(trainer_cfg, [metrics, *checkpointing], data.validation is not None)
    resume_from = prompt_resume_checkpoint(cfg)
    if resume_from is not None:
        print(f"prompt learning: resuming from {resume_from}", flush=True)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    summary = {"preempted": preemption.preempted, "steps": trainer.global_step, "tasks": list(module.tasks),
               "train_examples": len(train), "dropped_examples": train.dropped,
               "final_loss": float(module.step_metrics["loss"]) if module.step_metrics else None}
    if preemption.preempted:  # last.ckpt holds the state to continue from; no prompt files yet
        return module, summary
    trainer.save_checkpoint(last_checkpoint_path(out_dir), weights_only=False)

    prompts = module.prompt_file()
    if trainer.is_global_zero:  # global rank 0 holds the first pipeline stage
        save_prompt_file(prompts, out_dir / PROMPTS_FILE)
        save_prompt_file(bake(prompts), out_dir / TABLE_FILE)
    trainer.strategy.barrier("prompt_files_written")
    return module, {**summary, "prompts": str(out_dir / PROMPTS_FILE), "prompt_table": str(out_dir / TABLE_FILE)}
