"""The LightningModule of GPT pretraining. One training_step is one optimizer step over one
global batch: forward and backward of all microbatches (through the pipeline schedule when there
is one), gradient clipping and the optimizer step, written out in order as in Megatron's
train_step, which is why optimization is manual. The GPTEngine (nemo_llm.parallel) is built in
configure_model(), once MegatronStrategy has set up the process group and the mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from nemo_llm.models.gpt import GPTConfig, GPTModel
from nemo_llm.config.validation import microbatch_count
from nemo_llm.parallel.engine import EngineSettings, GPTEngine
from nemo_llm.training.optim import build_optimizer, build_scheduler


class GPTPretrainModule(pl.LightningModule):
    def __init__(self, gpt_config: Mapping[str, Any], optim: Mapping[str, Any], micro_batch_size: int,
                 global_batch_size: int, max_steps: int, gradient_clip_val: float,
                 engine: Mapping[str, Any] | None = None, seed: int = 1234):
        super().__init__()
        # Plain dicts only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.engine: GPTEngine | None = None
        self.consumed_samples = 0
        self.step_metrics: dict[str, torch.Tensor] = {}

    def configure_model(self) -> None:
        if self.engine is not None:
            return
        state = self.trainer.strategy.parallel_state
        num_micro = microbatch_count(self.hparams.global_batch_size, self.hparams.micro_batch_size,
                                     state.data_parallel_size)
        model = GPTModel(GPTConfig(**self.hparams.gpt_config))  # the same weights on every rank
        # Dropout after that: pipeline stages hold different layers, so they draw different masks
        # (Megatron's seed + 100 x pipeline rank).
        torch.manual_seed(self.hparams.seed + 100 * state.pp_rank)
        self.engine = GPTEngine(model, state, EngineSettings(**(self.hparams.engine or {})), num_micro,
                                self.trainer.strategy.root_device)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.engine, self.hparams.optim)
        scheduler = build_scheduler(optimizer, self.hparams.optim, self.hparams.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        loss = self.engine.forward_backward(batch["tokens"], batch["labels"])
        grad_norm = self.engine.clip_grad_norm(self.hparams.gradient_clip_val)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.consumed_samples += self.hparams.global_batch_size

        # An fp16 step with inf/NaN gradients left no gradients: the optimizer changed nothing, and
        # the step counts, as in Megatron.
        self.step_metrics = {"loss": loss, "lr": torch.tensor(lr), "grad_norm": grad_norm,
                             "skipped": torch.tensor(float(self.engine.skipped_step))}
        self.log("loss", loss, prog_bar=True, rank_zero_only=True)
        self.log("lr", lr, rank_zero_only=True)
        self.log("grad_norm", grad_norm, rank_zero_only=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.engine.evaluate_loss(batch["tokens"], batch["labels"])
        self.log("val_loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0], rank_zero_only=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["consumed_samples"] = self.consumed_samples
        if self.engine is not None and self.engine.loss_scaler is not None:
            checkpoint["loss_scaler"] = self.engine.loss_scaler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.consumed_samples = checkpoint.get("consumed_samples", 0)
        if self.engine is not None and self.engine.loss_scaler is not None and "loss_scaler" in checkpoint:
            self.engine.loss_scaler.load_state_dict(checkpoint["loss_scaler"])
