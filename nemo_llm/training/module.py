"""The LightningModule of GPT pretraining. One training_step is one optimizer step over one
global batch: forward and backward of all microbatches (through the pipeline schedule when there
is one), gradient clipping and the optimizer step, written out in order as in Megatron's
train_step, which is why optimization is manual. The GPTEngine (nemo_llm.parallel) is built in
configure_model(), once MegatronStrategy has set up the process group and the mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from nemo_llm.config.validation import microbatch_count
from nemo_llm.errors import NemoLLMError
from nemo_llm.models.gpt import GPTConfig, GPTModel
from nemo_llm.parallel.engine import EngineSettings, GPTEngine
from nemo_llm.training.optim import build_optimizer, build_scheduler


class TrainingDivergedError(NemoLLMError, RuntimeError):
    """Too many consecutive steps with NaN or inf gradients."""


def step_seed(seed: int, pipeline_rank: int, step: int) -> int:
    """The random seed of one training step on one pipeline stage. Dropout masks are a function of
    (seed, stage, step) alone, so a run resumed from a checkpoint, at any layout of the same
    pipeline depth, draws exactly the masks the uninterrupted run drew: no RNG state to save."""
    return int(np.random.SeedSequence([seed, pipeline_rank, step]).generate_state(1)[0])


class GPTPretrainModule(pl.LightningModule):
    def __init__(self, gpt_config: Mapping[str, Any], optim: Mapping[str, Any], micro_batch_size: int,
                 global_batch_size: int, max_steps: int, gradient_clip_val: float,
                 engine: Mapping[str, Any] | None = None, seed: int = 1234, max_consecutive_bad_steps: int = 10):
        super().__init__()
        # Plain dicts only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.engine: GPTEngine | None = None
        self.consumed_samples = 0
        self.consecutive_bad_steps = 0
        self.step_metrics: dict[str, torch.Tensor] = {}

    def configure_model(self) -> None:
        if self.engine is not None:
            return
        state = self.trainer.strategy.parallel_state
        num_micro = microbatch_count(self.hparams.global_batch_size, self.hparams.micro_batch_size,
                                     state.data_parallel_size)
        model = self.build_model()  # the same weights on every rank
        # Dropout after that: pipeline stages hold different layers, so they draw different masks
        # (Megatron's seed + 100 x pipeline rank).
        torch.manual_seed(self.hparams.seed + 100 * state.pp_rank)
        self.engine = GPTEngine(model, state, EngineSettings(**(self.hparams.engine or {})), num_micro,
                                self.trainer.strategy.root_device)

    def build_model(self) -> GPTModel:
        """The full model to train, before any parallelism (prompt learning overrides it to wrap a
        frozen base: only parameters with requires_grad reach the optimizer)."""
        return GPTModel(GPTConfig(**self.hparams.gpt_config))

    def configure_optimizers(self):
        optimizer = build_optimizer(self.engine, self.hparams.optim)
        scheduler = build_scheduler(optimizer, self.hparams.optim, self.hparams.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.hparams.seed, self.trainer.strategy.parallel_state.pp_rank,
                                    self.trainer.global_step))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        loss = self.engine.forward_backward(batch["tokens"], batch["labels"])
        grad_norm = self.engine.clip_grad_norm(self.hparams.gradient_clip_val)
        lr = optimizer.param_groups[0]["lr"]
        # A bad step (fp16 overflow, found by the loss scaler, or inf/NaN gradients at any precision;
        # the norm is global, so every rank agrees) changes no weight: without gradients the
        # optimizer skips every parameter. The step still counts, as in Megatron, but the LR
        # schedule does not advance.
        bad = self.engine.skipped_step or not bool(torch.isfinite(grad_norm))
        if bad:
            optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not bad:
            scheduler.step()
        self.consumed_samples += self.hparams.global_batch_size
        self._count_bad_step(bad and not self.engine.skipped_step)

        self.step_metrics = {"loss": loss, "lr": torch.tensor(lr), "grad_norm": grad_norm,
                             "skipped": torch.tensor(float(bad))}
        self.log("loss", loss, prog_bar=True, rank_zero_only=True)
        self.log("lr", lr, rank_zero_only=True)
        self.log("grad_norm", grad_norm, rank_zero_only=True)
        return loss

    def _count_bad_step(self, bad: bool) -> None:
        """fp16 overflows are the loss scaler's business; inf/NaN gradients otherwise mean divergence."""
        self.consecutive_bad_steps = self.consecutive_bad_steps + 1 if bad else 0
        limit = self.hparams.max_consecutive_bad_steps
        if limit and self.consecutive_bad_steps >= limit:
            raise TrainingDivergedError(
                f"{self.consecutive_bad_steps} consecutive steps with NaN or inf gradients, up to step "
                f"{self.trainer.global_step}: training stopped before writing a broken checkpoint; resume "
                "from the last one with a lower model.optim.lr (training.max_consecutive_bad_steps sets the limit)")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.engine.evaluate_loss(batch["tokens"], batch["labels"])
        self.log("val_loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0], rank_zero_only=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["consumed_samples"] = self.consumed_samples
        checkpoint["consecutive_bad_steps"] = self.consecutive_bad_steps
        if self.engine is not None and self.engine.loss_scaler is not None:
            checkpoint["loss_scaler"] = self.engine.loss_scaler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.consumed_samples = checkpoint.get("consumed_samples", 0)
        self.consecutive_bad_steps = checkpoint.get("consecutive_bad_steps", 0)
        if self.engine is not None and self.engine.loss_scaler is not None and "loss_scaler" in checkpoint:
            self.engine.loss_scaler.load_state_dict(checkpoint["loss_scaler"])
