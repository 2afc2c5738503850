"""The training stage: build tokenizer, model, data and Lightning Trainer from the config; fit."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.environments import LightningEnvironment

from nemo_llm.config.validation import parse_splits
from nemo_llm.data.data_module import GPTDataModule
from nemo_llm.launcher.slurm_task import RANK_PER_TASK
from nemo_llm.models.gpt import gpt_config_from
from nemo_llm.parallel.engine import EngineSettings
from nemo_llm.plan import Machine, forward_flops_per_token, uses_gpu
from nemo_llm.tokenizers import build_tokenizer
from nemo_llm.training.callbacks import Preemption, StepMetrics
from nemo_llm.training.checkpoint import CHECKPOINT_DIR, find_latest_checkpoint, last_checkpoint_path
from nemo_llm.training.module import GPTPretrainModule
from nemo_llm.training.strategy import MegatronStrategy
from nemo_llm.training.throughput import peak_tflops_per_device

def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], has_validation: bool,
                  checkpointing: bool = True) -> pl.Trainer:
    """checkpointing=False: no checkpoint at all, not even Lightning's default one (benchmarks)."""
    t = cfg.trainer
    run_dir = Path(cfg.run_dir)
    logger = TensorBoardLogger(str(run_dir), name="tensorboard", version="") if cfg.training.tensorboard else False
    m = cfg.model
    on_gpu = uses_gpu(cfg, Machine.detect())
    strategy = MegatronStrategy(
        tensor_model_parallel_size=m.tensor_model_parallel_size,
        pipeline_model_parallel_size=m.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
        async_save=cfg.training.checkpoint.async_save,
        process_group_backend="nccl" if on_gpu else "gloo",
    )
    # A Slurm task is one rank with the torch.distributed variables set (nemo_llm.launcher.slurm_task):
    # Lightning is to read those, not start its own SLURM handling (its SIGUSR1 requeue would race ours).
    plugins = [LightningEnvironment()] if os.environ.get(RANK_PER_TASK) == "1" else None
    if cfg.training.progress_bar:
        # Each refresh reads the step's loss back from the GPU, a wait: refresh as often as steps are logged.
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=t.log_every_n_steps)]
    return pl.Trainer(
        plugins=plugins,
        accelerator="gpu" if on_gpu else "cpu",
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        # The engine applies bf16 itself (autocast, or FSDP's mixed-precision policy).
        precision="32-true",
        max_steps=t.max_steps,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches if has_validation else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=cfg.training.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=checkpointing,
        # Samplers are ours (PretrainingBatchSampler): Lightning's would reshuffle and split over all ranks.
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )


def engine_settings(cfg: DictConfig) -> EngineSettings:
    m = cfg.model
    split = m.pipeline_model_parallel_layer_split
    return EngineSettings(
        sequence_parallel=m.sequence_parallel and m.tensor_model_parallel_size > 1,
        use_distributed_optimizer=m.use_distributed_optimizer,
        pipeline_schedule=m.pipeline_schedule,
        pipeline_layer_split=list(split) if split is not None else None,
        precision=str(cfg.trainer.precision),
        recompute={"granularity": m.activations_checkpoint_granularity,
                   "method": m.activations_checkpoint_method,
                   "num_layers": m.activations_checkpoint_num_layers},
        torch_compile=m.torch_compile,
        torch_compile_mode=m.torch_compile_mode,
        attention_backend=m.attention_backend,
        cross_entropy_loss_fusion=m.cross_entropy_loss_fusion,
        cross_entropy_chunk_tokens=m.cross_entropy_chunk_tokens,
        fp8=m.fp8,
    )


def checkpoint_callbacks(ckpt: DictConfig, run_dir: Path, has_validation: bool) -> tuple[Preemption, list]:
    """(the preemption handler, every checkpointing callback) of training.checkpoint for run_dir/checkpoints:
    periodic saves, the best by validation loss, last.ckpt on SIGTERM/SIGUSR1."""
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    preemption = Preemption(last_checkpoint_path(run_dir))
    # Monitoring "step" keeps the newest save_last_k of the periodic checkpoints.
    callbacks = [ModelCheckpoint(dirpath=checkpoint_dir, filename="step{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=ckpt.every_n_train_steps, monitor="step", mode="max",
                                 save_top_k=ckpt.save_last_k),
                 preemption]
    if has_validation and ckpt.save_top_k > 0:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, filename="best-step{step}-val_loss{val_loss:.4f}",
                                         auto_insert_metric_name=False, monitor="val_loss", mode="min",
                                         save_top_k=ckpt.save_top_k))
    return preemption, callbacks


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint `resume` names: auto, the latest complete one in run_dir (None if there is none)."""
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        return find_latest_checkpoint(Path(cfg.run_dir) / CHECKPOINT_DIR)
    return Path(cfg.resume)


def pretrain(cfg: DictConfig) -> dict:
    """Train cfg.model for cfg.trainer.max_steps; returns a summary. Writes <run_dir>/checkpoints/,
    metrics.jsonl, val_metrics.jsonl and tensorboard/."""
    # Lightning's info lines (device summary, adverts) repeat what the plan said.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    # Lightning's own deprecation noise about torch internals says nothing to our users.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    # Checkpoints after the optimizer step are what we want; val_loss is already reduced over ranks.
    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    m, t = cfg.model, cfg.trainer
    run_dir = Path(cfg.run_dir)
    tokenizer = build_tokenizer(m.tokenizer)
    gpt_config = gpt_config_from(m, tokenizer.vocab_size)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = GPTPretrainModule(
        gpt_config=asdict(gpt_config),
        optim=OmegaConf.to_container(m.optim, resolve=True),
        micro_batch_size=m.micro_batch_size,
        global_batch_size=m.global_batch_size,
        max_steps=t.max_steps,
        gradient_clip_val=t.gradient_clip_val,
        engine=asdict(engine_settings(cfg)),
        seed=cfg.seed,
        max_consecutive_bad_steps=cfg.training.max_consecutive_bad_steps,
    )
    data = GPTDataModule(m.data.data_prefix, parse_splits(m.data.splits_string), m.encoder_seq_length,
                         m.global_batch_size, t.max_steps, cfg.seed, m.data.num_workers, m.data.index_mapping_dir)

    world_size = t.devices * t.num_nodes
    device = torch.device("cuda" if uses_gpu(cfg, Machine.detect()) else "cpu")
    if device.type == "cuda" and str(t.precision) == "32":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores, the peak MFU is measured against
    metrics = StepMetrics(
        run_dir,
        tokens_per_step=m.global_batch_size * m.encoder_seq_length,
        flops_per_step=forward_flops_per_token(m, m.encoder_seq_length, gpt_config.vocab_size).model_flops(
            m.global_batch_size * m.encoder_seq_length),
        world_size=world_size,
        peak_tflops_per_device=peak_tflops_per_device(device, str(t.precision), t.peak_tflops_per_device),
        log_every_n_steps=t.log_every_n_steps,
        print_lines=not cfg.training.progress_bar,
    )
    has_validation = data.has_validation
    preemption, checkpointing = checkpoint_callbacks(cfg.training.checkpoint, run_dir, has_validation)
    trainer = build_trainer(cfg, [metrics, *checkpointing], has_validation)
    resume_from = resume_checkpoint(cfg)
    if resume_from is not None:
        print(f"resuming from {resume_from}", flush=True)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    if not preemption.preempted:
        # The final state, whatever the checkpoint interval: evaluation reads it.
        trainer.save_checkpoint(last_checkpoint_path(run_dir), weights_only=False)
    return {
        "preempted": preemption.preempted,
        "steps": trainer.global_step,
        "consumed_samples": module.consumed_samples,
        "final_loss": float(module.step_metrics["loss"]) if module.step_metrics else None,
        "last_checkpoint": str(last_checkpoint_path(run_dir)),
    }
